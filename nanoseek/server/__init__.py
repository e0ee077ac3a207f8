"""Serving: the OpenAI-compatible HTTP server with the browser chat app (`nanoseek serve`) and the terminal chat
(`nanoseek chat`). Only argparse here, so building the `nanoseek` parser stays fast; the commands import the rest.
"""

from __future__ import annotations

import argparse


def serve_args(p: argparse.ArgumentParser) -> None:
    from nanoseek.engine.commands import add_engine_args

    p.add_argument("model", help="checkpoint directory (or Hugging Face hub id)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface; set --api-key)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", action="extend", nargs="+", default=[], metavar="KEY", help="accepted bearer keys")
    p.add_argument("--api-key-file", help="file with one accepted key per line (keeps keys out of `ps`)")
    p.add_argument("--model-name", help="the model id clients send (default: the checkpoint directory's name)")
    p.add_argument(
        "--model-alias",
        action="extend",
        nargs="+",
        default=[],
        metavar="NAME",
        help="more model ids to answer to, e.g. the names an agent sends (*: any id); responses name the id the "
        "client sent, and an alias changes nothing else (deepseek-chat does not turn thinking off here)",
    )
    p.add_argument("--max-waiting", type=int, default=256, help="queued sequences (prompts x n) before a 429")
    p.add_argument("--rate-limit-rpm", type=int, help="requests per minute per API key")
    p.add_argument("--rate-limit-tpm", type=int, help="tokens (prompt + n x max_tokens) per minute per API key")
    p.add_argument("--max-body-bytes", type=int, default=4 * 2**20, help="largest request body accepted")
    p.add_argument(
        "--max-tokens-cap",
        type=int,
        default=16384,
        help="most tokens generated per sample: requests without max_tokens get this many (or the rest of the "
        "context), larger ones are clamped (default: %(default)s; 0: no cap but the context)",
    )
    p.add_argument(
        "--allow-origin",
        action="extend",
        nargs="+",
        default=[],
        metavar="ORIGIN",
        help="browser origins (e.g. http://localhost:3000, or *) allowed to call the API besides the server's own; "
        "other cross-origin browser requests get a 403",
    )
    p.add_argument(
        "--allow-host",
        action="extend",
        nargs="+",
        default=[],
        metavar="HOST",
        help="Host header names accepted besides localhost, IP addresses and --host (e.g. a DNS name behind a "
        "proxy, or *); others get a 403 (DNS-rebinding protection)",
    )
    p.add_argument("--grace-seconds", type=float, default=10.0, help="on SIGTERM: time running requests may finish")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add_engine_args(p)


def serve(args: argparse.Namespace) -> int:
    from nanoseek.server.app import serve_main

    return serve_main(args)


def chat_args(p: argparse.ArgumentParser) -> None:
    from nanoseek.engine.commands import add_engine_args

    p.add_argument("model", nargs="?", help="checkpoint directory to chat with in-process (or use --url)")
    p.add_argument("--url", help="an OpenAI-compatible server instead, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-key", help="key for --url (default: $OPENAI_API_KEY, else none)")
    p.add_argument("--model", dest="served_model", help="model id at --url (default: the server's first)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=0.6, help="DeepSeek recommends 0.6 for R1 models")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-think", action="store_true", help="thinking off (switch in the chat with /think on|off)")
    add_engine_args(p)


def chat(args: argparse.Namespace) -> int:
    from nanoseek.server.chat import chat_main

    return chat_main(args)


COMMANDS = [
    (
        "serve",
        "HTTP server: OpenAI chat, completions, responses; Anthropic messages; a browser chat at /",
        serve_args,
        serve,
    ),
    ("chat", "chat in the terminal with a checkpoint (in-process) or a server (--url)", chat_args, chat),
]
