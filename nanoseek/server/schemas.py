"""Request and response shapes of the OpenAI-compatible API, and its error format.

Requests are strict (a string where a number belongs is a 400, as with OpenAI) but accept unknown fields, which
are ignored. Out-of-range values fail validation here and become 400s in app.py, never 422s."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator
from pydantic.json_schema import SkipJsonSchema

MAX_N = 16  # samples per request
MAX_PROMPTS = 64  # prompts per /v1/completions request
MAX_STOP = 16  # stop strings per request (DeepSeek allows 16, OpenAI 4)
MAX_STOP_CHARS = 200
INT64 = 2**63

_STRICT = ConfigDict(strict=True, extra="allow")


class APIError(Exception):
    """An error a client can act on, rendered as OpenAI's {"error": {...}} with this status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def describe_validation_errors(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """pydantic's errors -> (one readable message, the offending parameter). When a value matches none of a
    union's members, the most specific error is the deepest one, preferring a broken constraint (a list too long)
    to a wrong type (not a string)."""
    if not errors:
        return "invalid request", None
    error = max(errors, key=lambda e: (len(e.get("loc", ())), not str(e.get("type", "")).endswith("_type")))
    loc = [part for part in error.get("loc", ()) if part != "body" and not _is_union_tag(part)]
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or None
    message = str(error.get("msg", "invalid value"))
    if error.get("type") == "json_invalid":
        detail = (error.get("ctx") or {}).get("error", "")
        return f"the request body is not valid JSON: {detail}".rstrip(": "), None
    if not loc and error.get("type") in ("model_attributes_type", "dict_type", "model_type"):
        return "the request body must be a JSON object (sent with Content-Type: application/json)", None
    if error.get("type") == "missing":
        return f"missing required parameter '{param}'", param
    return (f"invalid value for '{param}': {message}" if param else f"invalid request body: {message}"), param


_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict"}


def _is_union_tag(part: Any) -> bool:
    """pydantic names the member of a union in an error's location ("str", "list[int]", "constrained-str")."""
    return isinstance(part, str) and (not part.isidentifier() or part in _TYPE_NAMES)


# ---- requests


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


ToolName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


class FunctionCall(BaseModel):
    model_config = _STRICT
    name: ToolName
    arguments: str | dict[str, Any] = "{}"  # a JSON string (OpenAI), or an object


class ToolCall(BaseModel):
    model_config = _STRICT
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDef(BaseModel):
    model_config = _STRICT
    name: ToolName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    model_config = _STRICT
    name: ToolName


class NamedToolChoice(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: NamedFunction


class Thinking(BaseModel):
    model_config = _STRICT
    type: Literal["enabled", "disabled"]


class Message(BaseModel):
    # The schema asks for content, never null; an assistant message may still omit it (app.py refuses a missing
    # or null content on the other roles).
    model_config = ConfigDict(strict=True, extra="allow", json_schema_extra={"required": ["role", "content"]})
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | SkipJsonSchema[None] = None
    # assistant turns: kept within a turn that called tools, dropped elsewhere (DeepSeek's rule, prompts.py)
    reasoning_content: str | None = None
    name: str | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=128)] | None = None  # assistant
    tool_call_id: str | None = None  # tool
    prefix: bool | None = None  # the last assistant message: generation continues its text (DeepSeek beta)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class JSONSchemaFormat(BaseModel):
    """OpenAI's response_format.json_schema: the output is JSON valid against `schema` (constrained decoding)."""

    model_config = ConfigDict(strict=True, extra="allow", populate_by_name=True)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # none: any JSON
    strict: bool | None = None  # true: a schema keyword the grammar cannot enforce is a 400, not ignored


class ResponseFormat(BaseModel):
    model_config = _STRICT
    type: Literal["text", "json_object", "json_schema"]  # both JSON types are enforced by constrained decoding
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError('response_format needs "json_schema" exactly when its type is "json_schema"')
        return self


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


Probability = Annotated[float, Field(ge=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
PositiveInt = Annotated[int, Field(ge=1)]
StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
ONLY_ZERO: dict[str, Any] = {"enum": [0]}  # accepted (clients send 0 by default), any other value is refused


class _Sampling(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = _STRICT
    model: str | None = Field(None, description="the served model's id (see /v1/models); default: that model")
    max_tokens: PositiveInt | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Probability | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)] | None = None
    seed: Annotated[int, Field(ge=-INT64, lt=INT64)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    frequency_penalty: Penalty | None = Field(None, description="not supported: only 0", json_schema_extra=ONLY_ZERO)
    presence_penalty: Penalty | None = Field(None, description="not supported: only 0", json_schema_extra=ONLY_ZERO)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        None, description="not supported: only {} (keys must be token ids)", json_schema_extra={"maxProperties": 0}
    )
    user: Annotated[str, Field(max_length=256)] | None = None
    user_id: Annotated[str, Field(max_length=256)] | None = None  # DeepSeek's name for `user`


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    thinking: Thinking | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max", "ultra"] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # where each message came from in the client's own request when an adapter built this one (Responses API:
    # "instructions", "input[3]"; Anthropic: "system", "messages[1]"), so errors name the client's fields, not ours
    _origins: list[str] = PrivateAttr(default_factory=list)

    def where(self, i: int) -> str:
        """How errors name messages[i]: by the field of the request the client sent."""
        return self._origins[i] if i < len(self._origins) else f"messages[{i}]"


def adapted_chat_request(fields: dict[str, Any], origins: list[str]) -> ChatCompletionRequest:
    """The chat request another API's request became (anthropic.py, responses_api.py; None fields left out), with
    the field of the client's request each message came from."""
    try:
        request = ChatCompletionRequest.model_validate({k: v for k, v in fields.items() if v is not None}, strict=False)
    except ValidationError as e:
        message, param = describe_validation_errors(list(e.errors()))
        raise APIError(400, message, param=param) from None
    request._origins = origins
    return request


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description=f"a text, a token-id list, or a list of up to {MAX_PROMPTS} of either"
    )
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool = False
    best_of: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    suffix: str | None = None


# ---- responses (documentation for /openapi.json; handlers build plain dicts of these shapes)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_cache_hit_tokens: int
    prompt_cache_miss_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[dict[str, Any]] = []


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class TextChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse} for status in statuses}


GENERATION_RESPONSES = _errors(400, 401, 404, 413, 429, 503)
SSE = {"text/event-stream": {"schema": {"type": "string", "description": "server-sent events when stream=true"}}}
