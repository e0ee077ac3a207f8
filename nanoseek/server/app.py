"""`nanoseek serve`: the app (routes.py) under uvicorn, with a graceful drain on SIGTERM.

Modules: routes.py (the FastAPI app and its endpoints), jobs.py (admission and the bridge to the engine's
thread), prompts.py (request -> prompt and sampling parameters), responses.py (OpenAI response shaping and SSE),
schemas.py (request/response shapes), security.py (keys, rate limits, body size, Host/Origin).
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import uvicorn

from nanoseek.server.jobs import DEFAULT_MAX_TOKENS_CAP, Server, ServerConfig
from nanoseek.server.routes import create_app

__all__ = ["DEFAULT_MAX_TOKENS_CAP", "DrainingServer", "ServerConfig", "create_app", "serve_main"]

log = logging.getLogger("nanoseek.server")


def serve_main(args: Any) -> int:
    from nanoseek.checkpoint import resolve_model_path
    from nanoseek.engine.commands import load_engine
    from nanoseek.server.security import LOOPBACK_HOSTS, load_keys

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keys = load_keys(args.api_key, args.api_key_file)
    for name, value in (("--max-waiting", args.max_waiting), ("--max-body-bytes", args.max_body_bytes)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1")
    if args.max_tokens_cap is not None and args.max_tokens_cap < 0:
        raise ValueError("--max-tokens-cap must be at least 0 (0: no cap)")
    path = resolve_model_path(args.model)  # fail now, not in the loading thread, when it is not a checkpoint
    args.model = str(path)
    config = ServerConfig(
        model_name=args.model_name or path.name,
        model_aliases=list(args.model_alias),
        api_keys=keys,
        max_waiting=args.max_waiting,
        rate_limit_rpm=args.rate_limit_rpm,
        rate_limit_tpm=args.rate_limit_tpm,
        max_body_bytes=args.max_body_bytes,
        max_tokens_cap=args.max_tokens_cap or None,
        grace_seconds=args.grace_seconds,
        allowed_origins=list(args.allow_origin),
        allowed_hosts=[args.host, *args.allow_host],
    )
    if args.host not in LOOPBACK_HOSTS and not keys:
        log.warning("serving on %s without API keys: anyone who can reach it can use it (set --api-key)", args.host)
    # with --compile the decode step compiles for every batch size before the server reports ready (/health)
    app = create_app(partial(load_engine, args, warm_sequences=args.max_running), config)
    uv_config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5
    )
    DrainingServer(uv_config, app.state.server).run()
    return 0


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a graceful drain on SIGTERM/SIGINT: new requests get 503 while running ones may finish
    for `grace_seconds`; then they are cancelled and uvicorn shuts down (which stops the engine). A second signal
    exits at once."""

    def __init__(self, config: uvicorn.Config, state: Server):
        super().__init__(config)
        self.state = state
        self.drain_until: float | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.drain_until is None:
            log.info("draining: refusing new requests, %d running", len(self.state.jobs))
            self.state.draining = True
            self.drain_until = time.monotonic() + self.state.config.grace_seconds
        else:
            self.should_exit = self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        state = self.state
        draining = self.drain_until is not None and not self.should_exit
        if draining and (not state.jobs or time.monotonic() >= self.drain_until):
            if state.jobs:
                log.info("grace period over: cancelling %d requests", len(state.jobs))
            state.cancel_all()
            self.should_exit = True
        return await super().on_tick(counter)
