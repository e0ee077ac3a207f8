"""The FastAPI app: the OpenAI-compatible routes (DeepSeek API flavour) over one engine, the browser chat app at
`/`, and every error in OpenAI's shape.

Where this API differs from OpenAI's or DeepSeek's:
- response_format {"type": "json_object"} (which also adds a system instruction to reply with one JSON object)
  and {"type": "json_schema", "json_schema": {"schema": ..., "strict": ...}} are enforced by constrained decoding
  (nanoseek/engine/grammar.py): the output is JSON (valid against the schema) unless max_tokens cuts it off
  (finish_reason "length"). A reasoning model thinks freely first; the JSON is the content after </think>. With
  strict, a schema keyword the grammar cannot enforce is a 400 rather than ignored.
- tools (tools.py): a forced tool_choice (required, a named function) writes the call's opening into the prompt,
  and constrained decoding keeps the arguments valid against the function's parameters schema. Thinking is
  switched with DeepSeek's `thinking`, reasoning_effort "none" or chat_template_kwargs; FIM (suffix) and chat
  prefix completion are served on /v1 and on DeepSeek's /beta paths; Anthropic's Messages API at
  /anthropic/v1/messages and /v1/messages (anthropic.py); OpenAI's Responses API at /v1/responses, stateless
  (responses_api.py).
- top_logprobs > 0 (and /v1/completions logprobs > 0) are refused: only the chosen tokens' logprobs exist.
- logit_bias and non-zero frequency/presence penalties are refused (0 and {} are accepted); other unknown
  fields are ignored.
- messages must not contain the tokenizer's added tokens or the chat template's role markers (400): they would
  forge turns. Refused rather than stripped or escaped: the prompt reaches the engine as one string, so a marker
  cannot be kept as plain text, and silently changing a client's text is worse than telling it.
- model may be omitted (the served model); assistant messages may carry reasoning_content, kept in a turn that
  called tools and dropped elsewhere (DeepSeek's rule; its API refuses a missing one in thinking tool turns, this
  server does not). `user`/`user_id` (with the API key) name the prefix-cache namespace (constraints.py).
- extensions from vLLM: top_k, min_p, ignore_eos.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from nanoseek.server.anthropic import (
    CountTokensRequest,
    MessagesRequest,
    MessageStream,
    chat_request,
    message_response,
)
from nanoseek.server.constraints import cache_salt, with_extensions
from nanoseek.server.jobs import Job, ServedEngine, Server, ServerConfig
from nanoseek.server.prompts import (
    ChatPrompt,
    check_text_options,
    completion_prompts,
    encode,
    fim_prompts,
    params_from_request,
    prompt_text,
    render_chat,
)
from nanoseek.server.responses import (
    CLIENT_GONE,
    ChatContext,
    ChatStream,
    EventStream,
    TextContext,
    TextStream,
    chat_response,
    collect,
    stream_events,
    stream_items,
    text_response,
)
from nanoseek.server.responses_api import (
    ResponseContext,
    ResponsesRequest,
    ResponseStream,
    response_object,
)
from nanoseek.server.responses_api import chat_request as responses_chat_request
from nanoseek.server.schemas import (
    GENERATION_RESPONSES,
    SSE,
    APIError,
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    TextCompletion,
    describe_validation_errors,
    error_body,
)
from nanoseek.server.security import ANTHROPIC_ROOT_PATH, APIKeys, Guard, SameOrigin

log = logging.getLogger("nanoseek.server")
STATIC = Path(__file__).parent / "static"


def create_app(load_engine: Callable[[], ServedEngine], config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app; `load_engine` runs in a background thread at startup."""
    server = Server(load_engine, config or ServerConfig())
    app = _guarded_app(server)
    _openai_routes(app, server)
    _anthropic_routes(app, server)
    _service_routes(app, server)
    return app


def _guarded_app(server: Server) -> FastAPI:
    """The app with its lifespan (the engine loads in the background), middleware and error handlers."""
    config = server.config

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.start_loading()
        yield
        server.close()

    app = FastAPI(
        title="nanoseek",
        version="0.1.0",
        summary="OpenAI-compatible API (DeepSeek flavour)",
        lifespan=lifespan,
        strict_content_type=False,  # a body without Content-Type is read as JSON, as OpenAI's API does
    )
    app.state.server = server
    # outermost last: the Host/Origin check, CORS for configured origins (preflights carry no API key), then keys
    app.add_middleware(Guard, keys=APIKeys(config.api_keys), max_body_bytes=config.max_body_bytes)
    if config.allowed_origins:
        origins = ["*"] if "*" in config.allowed_origins else [o.rstrip("/") for o in config.allowed_origins]
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(SameOrigin, allowed_origins=config.allowed_origins, allowed_hosts=config.allowed_hosts)
    _install_error_handlers(app)
    return app


async def _admit(
    server: Server, request: Request, engine: ServedEngine, body, prompts, max_tokens, logprobs, constraint=None
) -> Job:
    """The body's sampling params, constraint and prefix-cache namespace (API key, user id), then the job."""
    params = params_from_request(body, max_tokens, server.config, logprobs)
    salt = cache_salt(getattr(request.state, "api_key", None), body.user_id or body.user)
    params = with_extensions(params, constraint, salt)
    return server.admit(request, engine, await encode(engine, prompts), params)


async def _chat_job(
    server: Server, request: Request, engine: ServedEngine, chat: ChatCompletionRequest, max_tokens, logprobs: bool
) -> tuple[ChatPrompt, Job]:
    """A chat request (also one translated from the Responses or Messages API) rendered and admitted. Rendering
    runs in a worker thread: it scans and renders long texts."""
    prompt = await asyncio.to_thread(render_chat, engine.tokenizer, chat)
    job = await _admit(server, request, engine, chat, [prompt.text], max_tokens, logprobs, prompt.constraint)
    return prompt, job


async def _answer(
    server: Server, request: Request, job: Job, events: AsyncIterator | None, final: Callable
) -> Response:
    """Stream the SSE `events`, or collect every sample and answer `final()`; the job is released either way."""
    if events is not None:
        return EventStream(events, partial(server.release, job))
    try:
        if not await collect(job, request, server.config.keepalive_seconds):
            return Response(status_code=CLIENT_GONE)
        return JSONResponse(final())
    finally:
        server.release(job)


def _openai_routes(app: FastAPI, server: Server) -> None:
    """/v1/chat/completions and /v1/completions (also at DeepSeek's /beta paths), and /v1/responses."""
    tick = server.config.keepalive_seconds

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses={**GENERATION_RESPONSES, 200: {"content": SSE}},
    )
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        engine = server.ready()
        model = server.check_model(body.model)
        if body.top_logprobs:
            raise APIError(
                400, "top_logprobs > 0 is not supported; logprobs=true gives the chosen tokens'", param="top_logprobs"
            )
        max_tokens = body.max_completion_tokens or body.max_tokens
        logprobs = bool(body.logprobs)
        prompt, job = await _chat_job(server, request, engine, body, max_tokens, logprobs)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        ctx = ChatContext(
            f"chatcmpl-{uuid.uuid4().hex}", model, int(time.time()), prompt, engine.tokenizer, include_usage, logprobs
        )
        events = stream_events(server, job, ChatStream(job, ctx), tick) if body.stream else None
        return await _answer(server, request, job, events, lambda: chat_response(job, ctx))

    @app.post(
        "/v1/completions",
        response_model=TextCompletion,
        responses={**GENERATION_RESPONSES, 200: {"content": SSE}},
    )
    async def completions(body: CompletionRequest, request: Request) -> Response:
        engine = server.ready()
        model = server.check_model(body.model)
        check_text_options(body)
        prompts = fim_prompts(engine.tokenizer, completion_prompts(body.prompt), body.suffix)
        logprobs = body.logprobs is not None
        job = await _admit(server, request, engine, body, prompts, body.max_tokens, logprobs)
        echo = [prompt_text(engine, p) if body.echo else "" for p in prompts]
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        ctx = TextContext(
            f"cmpl-{uuid.uuid4().hex}", model, int(time.time()), engine.tokenizer, include_usage, logprobs, echo
        )
        events = stream_events(server, job, TextStream(job, ctx), tick) if body.stream else None
        return await _answer(server, request, job, events, lambda: text_response(job, ctx))

    @app.post("/v1/responses", responses={**GENERATION_RESPONSES, 200: {"content": SSE}})
    async def create_response(body: ResponsesRequest, request: Request) -> Response:
        """OpenAI's Responses API (responses_api.py): the same engine path as a chat completion."""
        engine = server.ready()
        model = server.check_model(body.model)
        chat = responses_chat_request(body)
        prompt, job = await _chat_job(server, request, engine, chat, chat.max_tokens, False)
        ctx = ResponseContext(body, prompt, model, engine.tokenizer)
        events = stream_items(server, job, ResponseStream(job, ctx), tick) if body.stream else None
        return await _answer(server, request, job, events, lambda: response_object(job, ctx))

    # DeepSeek's beta paths (chat prefix completion, FIM): the same endpoints here
    app.add_api_route("/beta/chat/completions", chat_completions, methods=["POST"], include_in_schema=False)
    app.add_api_route("/beta/completions", completions, methods=["POST"], include_in_schema=False)


def _anthropic_routes(app: FastAPI, server: Server) -> None:
    """Anthropic's Messages API and count_tokens, under DeepSeek's /anthropic and at Anthropic's own paths."""
    tick = server.config.keepalive_seconds

    @app.post("/anthropic/v1/messages", include_in_schema=False)
    async def anthropic_messages(body: MessagesRequest, request: Request) -> Response:
        engine = server.ready()
        model = server.check_model(body.model)
        chat = chat_request(body)
        prompt, job = await _chat_job(server, request, engine, chat, chat.max_tokens, False)
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        stream = MessageStream(job, prompt, model, message_id)
        events = stream_items(server, job, stream, tick) if body.stream else None
        return await _answer(server, request, job, events, lambda: message_response(job, prompt, model, message_id))

    @app.post("/anthropic/v1/messages/count_tokens", include_in_schema=False)
    async def anthropic_count_tokens(body: CountTokensRequest) -> dict[str, int]:
        """The prompt's tokens as this model renders and encodes it (agents budget their context with it)."""
        engine = server.ready()
        server.check_model(body.model)
        prompt = await asyncio.to_thread(render_chat, engine.tokenizer, chat_request(body))
        return {"input_tokens": len((await encode(engine, [prompt.text]))[0])}

    # the same endpoints at Anthropic's own paths, for clients whose base URL is this server's root
    app.add_api_route(ANTHROPIC_ROOT_PATH, anthropic_messages, methods=["POST"], include_in_schema=False)
    count_path = f"{ANTHROPIC_ROOT_PATH}/count_tokens"
    app.add_api_route(count_path, anthropic_count_tokens, methods=["POST"], include_in_schema=False)


def _service_routes(app: FastAPI, server: Server) -> None:
    """The model list, health, metrics and the browser chat."""

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> dict[str, Any]:
        ids = [server.config.model_name, *(a for a in server.config.model_aliases if a != "*")]
        return {"object": "list", "data": [_model_card(server, i) for i in ids]}

    @app.get("/v1/models/{model}", response_model=ModelCard, responses={404: {"model": ErrorResponse}})
    async def model_info(model: str) -> dict[str, Any]:
        return _model_card(server, server.check_model(model))

    @app.get("/health", responses={503: {"model": ErrorResponse}})
    async def health() -> Response:
        reason = server.unavailable()
        if reason:
            return JSONResponse(error_body(reason, type="server_error", code="unavailable"), status_code=503)
        return JSONResponse({"status": "ok", "model": server.config.model_name})

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _model_card(server: Server, model_id: str) -> dict[str, Any]:
    engine = server.engine
    return {
        "id": model_id,
        "object": "model",
        "created": server.created,
        "owned_by": "nanoseek",
        "max_model_len": getattr(engine, "max_context", None) if engine is not None else None,
    }


def _install_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape; a bad request is never a 5xx."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        message, param = describe_validation_errors(list(e.errors()))
        return JSONResponse(error_body(message, param=param, code="invalid_value"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        method, path = request.method, request.url.path
        if e.status_code == 404:
            message = f"Invalid URL ({method} {path})"
        elif e.status_code == 405:
            message = f"{method} is not allowed on {path} (allowed: {(e.headers or {}).get('Allow', '?')})"
        else:
            message = str(e.detail)
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        return JSONResponse(error_body(message, type=kind), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        body = error_body(f"internal server error ({type(e).__name__}); see the server log", type="server_error")
        return JSONResponse(body, status_code=500)
