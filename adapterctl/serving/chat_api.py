"""OpenAI's chat-completions wire format: a request body read into a `ChatRequest`, and the response and
stream-chunk objects written from the runtime's answers.

Every parameter of the OpenAI API is either implemented, accepted because it cannot change an answer
(`NO_EFFECT`), or refused with 400 and `code: unsupported_parameter` (`UNSUPPORTED`): none is ignored.
A field OpenAI does not define is refused like OpenAI refuses it. docs/serving.md has the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from adapterctl import feedback
from adapterctl.errors import InvalidInput
from adapterctl.serving.completion import MAX_CHOICES, MAX_STOP_STRINGS, MAX_TOP_LOGPROBS, Choice, Delta, Sampling

MAX_SEED = 2**63 - 1
MIN_TEMPERATURE = 0.01
"""Below this (but above 0, greedy) the logits overflow when divided by the temperature."""
DEFAULT_MAX_TOKENS = 64
MAX_LOGIT_BIAS = 300
MAX_USER_CHARS = 256
MAX_TOKEN_ID_DIGITS = 20

IMPLEMENTED = (
    "messages",
    "model",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "stream",
    "stream_options",
    "user",
    "safety_identifier",
    "store",
    "service_tier",
    "modalities",
    "response_format",
)
NO_EFFECT = ("prompt_cache_key", "prompt_cache_options", "prompt_cache_retention")
"""Hints to a prompt cache: adapterctl has none, and an answer is the same with or without them."""
UNSUPPORTED = {
    "tools": "tool calling",
    "tool_choice": "tool calling",
    "parallel_tool_calls": "tool calling",
    "functions": "function calling",
    "function_call": "function calling",
    "audio": "audio output",
    "prediction": "predicted outputs",
    "web_search_options": "web search",
    "reasoning_effort": "reasoning effort",
    "verbosity": "verbosity",
    "metadata": "stored-completion metadata",
    "moderation": "moderation",
}
"""Parameters adapterctl does not implement, refused with 400 whenever they are given (null counts as not given)."""

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
ECHOED_NULL_KEYS = ("refusal", "tool_calls", "function_call", "audio", "annotations")
"""Keys an assistant message carries when a client sends back a response's message: fine while empty."""


class Unsupported(InvalidInput):
    code = "unsupported_parameter"


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    user: str | None = None
    store: bool = True


def parse(body: dict[str, Any], max_field_bytes: int = feedback.DEFAULT_MAX_FIELD_BYTES) -> ChatRequest:
    """The request in `body`, or InvalidInput naming the first field that is wrong (its `param`)."""
    given = {key: value for key, value in body.items() if value is not None}
    for key in body:  # an unknown field is refused even when null: only the parameters OpenAI defines may be null
        if key in UNSUPPORTED and key in given:
            raise Unsupported(f"'{key}' is not supported: adapterctl does not implement {UNSUPPORTED[key]}", param=key)
        if key not in IMPLEMENTED and key not in NO_EFFECT and key not in UNSUPPORTED:
            raise InvalidInput(f"Unrecognized request argument supplied: {key}", param=key)
    _check_no_effect(given)
    _check_formats(given)
    stream = _boolean(given, "stream", False)
    if "stream_options" in given and not stream:
        raise InvalidInput("'stream_options' is only allowed when 'stream' is true", param="stream_options")
    return ChatRequest(
        model=_model(given.get("model")),
        messages=_messages(given.get("messages"), max_field_bytes),
        sampling=_sampling(given),
        stream=stream,
        include_usage=_stream_options(given.get("stream_options", {})),
        user=_user(given),
        store=_boolean(given, "store", True),
    )


def _model(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput("field 'model' is required: a line name, line@vN for an approved version, or line@base", param="model")
    return value


def _messages(value: Any, max_field_bytes: int) -> list[dict[str, str]]:
    """OpenAI's messages as adapterctl's {role, content}: text parts joined, developer read as system."""
    if not isinstance(value, list) or not value:
        raise InvalidInput("field 'messages' must be a non-empty list of chat messages {role, content}", param="messages")
    messages = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise InvalidInput(f"{where} must be an object with 'role' and 'content'", param=where)
        role = message.get("role")
        if role not in ROLES:
            raise Unsupported(f"{where}.role {role!r} is not supported; roles: {', '.join(ROLES)}", param=f"{where}.role")
        for key, item in message.items():
            if key in ("role", "content") or (key in ECHOED_NULL_KEYS and not item):
                continue
            raise Unsupported(f"{where}.{key} is not supported: messages carry a role and text content", param=f"{where}.{key}")
        messages.append({"role": ROLES[role], "content": _content(message.get("content"), where)})
    try:
        return feedback.parse_prompt(messages, max_field_bytes, "messages")
    except InvalidInput as exc:
        raise InvalidInput(str(exc), param="messages") from None


def _content(value: Any, where: str) -> Any:
    if not isinstance(value, list):
        return value  # a string, or whatever parse_prompt names as wrong
    texts = []
    for index, part in enumerate(value):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise Unsupported(f"{where}.content[{index}] is {kind!r}: only text content is supported", param=f"{where}.content[{index}]")
        texts.append(part["text"])
    return "\n".join(texts)


def _sampling(given: dict[str, Any]) -> Sampling:
    max_tokens = _max_tokens(given)
    temperature = _number(given, "temperature", 0.0, 0, 2)
    if 0 < temperature < MIN_TEMPERATURE:
        raise InvalidInput(f"field 'temperature' must be 0 (greedy) or from {MIN_TEMPERATURE} to 2", param="temperature")
    top_p = _number(given, "top_p", 1.0, 0, 1)
    if top_p == 0:
        raise InvalidInput("field 'top_p' must be more than 0 and at most 1", param="top_p")
    logprobs = _boolean(given, "logprobs", False)
    top_logprobs = _integer(given, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    if "top_logprobs" in given and not logprobs:
        raise InvalidInput("'top_logprobs' needs 'logprobs' set to true", param="top_logprobs")
    seed = given.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not -MAX_SEED - 1 <= seed <= MAX_SEED):
        raise InvalidInput("field 'seed' must be an integer that fits in 64 bits (-2**63 to 2**63-1)", param="seed")
    return Sampling(
        max_tokens=max_tokens,
        temperature=float(temperature),
        top_p=float(top_p),
        seed=seed,
        n=_integer(given, "n", 1, 1, MAX_CHOICES),
        stop=_stop(given.get("stop")),
        frequency_penalty=float(_number(given, "frequency_penalty", 0.0, -2, 2)),
        presence_penalty=float(_number(given, "presence_penalty", 0.0, -2, 2)),
        logit_bias=_logit_bias(given.get("logit_bias")),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )


def _max_tokens(given: dict[str, Any]) -> int:
    values = {key: _integer(given, key, DEFAULT_MAX_TOKENS, 1, None) for key in ("max_completion_tokens", "max_tokens") if key in given}
    if len(set(values.values())) > 1:
        raise InvalidInput("'max_tokens' and 'max_completion_tokens' differ; give one of them", param="max_tokens")
    return next(iter(values.values()), DEFAULT_MAX_TOKENS)


def _stop(value: Any) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if value is None:
        return ()
    if not isinstance(stops, list) or not 1 <= len(stops) <= MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stops):
        raise InvalidInput(f"field 'stop' must be a non-empty string or a list of 1 to {MAX_STOP_STRINGS} non-empty strings", param="stop")
    return tuple(stops)


def _logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) > MAX_LOGIT_BIAS:
        raise InvalidInput(
            f"field 'logit_bias' must be an object of at most {MAX_LOGIT_BIAS} token ids (as strings) to numbers", param="logit_bias"
        )
    bias = []
    for key, number in value.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= MAX_TOKEN_ID_DIGITS):
            raise InvalidInput(
                f"logit_bias key {key[:MAX_TOKEN_ID_DIGITS]!r}{'...' if len(key) > MAX_TOKEN_ID_DIGITS else ''} is not a token id",
                param="logit_bias",
            )
        if not _is_number(number) or not -100 <= number <= 100:
            raise InvalidInput(f"logit_bias[{key!r}] must be a number from -100 to 100", param="logit_bias")
        bias.append((int(key), float(number)))
    return tuple(bias)


def _stream_options(value: Any) -> bool:
    if not isinstance(value, dict) or set(value) - {"include_usage", "include_obfuscation"}:
        raise InvalidInput(
            "field 'stream_options' must be an object with 'include_usage' and/or 'include_obfuscation'", param="stream_options"
        )
    for key, option in value.items():
        if option is not None and not isinstance(option, bool):
            raise InvalidInput(f"stream_options.{key} must be true or false", param=f"stream_options.{key}")
    return bool(value.get("include_usage"))


def _user(given: dict[str, Any]) -> str | None:
    for key in ("user", "safety_identifier"):
        if key in given and (not isinstance(given[key], str) or len(given[key]) > MAX_USER_CHARS or "\x00" in given[key]):
            # stored with the issued response: PostgreSQL refuses NUL, and one such record would fail its whole batch
            raise InvalidInput(f"field '{key}' must be a string of at most {MAX_USER_CHARS} characters, without NUL", param=key)
    return given.get("user", given.get("safety_identifier"))


def _check_no_effect(given: dict[str, Any]) -> None:
    for key, kind in (("prompt_cache_key", str), ("prompt_cache_options", dict), ("prompt_cache_retention", str)):
        if key in given and not isinstance(given[key], kind):
            raise InvalidInput(f"field '{key}' must be {'a string' if kind is str else 'an object'}", param=key)


def _check_formats(given: dict[str, Any]) -> None:
    """Output formats: text only."""
    response_format = given.get("response_format", {"type": "text"})
    if not isinstance(response_format, dict) or response_format.get("type") != "text":
        kind = response_format.get("type") if isinstance(response_format, dict) else response_format
        raise Unsupported(f"response_format {kind!r} is not supported: answers are plain text (type 'text')", param="response_format")
    if given.get("modalities", ["text"]) != ["text"]:
        raise Unsupported("modalities other than ['text'] are not supported", param="modalities")
    if given.get("service_tier", "auto") not in ("auto", "default"):
        raise Unsupported(f"service_tier {given['service_tier']!r} is not supported: 'auto' or 'default'", param="service_tier")


def _boolean(given: dict[str, Any], key: str, default: bool) -> bool:
    value = given.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"field '{key}' must be true or false", param=key)
    return value


def _integer(given: dict[str, Any], key: str, default: int, low: int, high: int | None) -> int:
    value = given.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        raise InvalidInput(f"field '{key}' must be an integer from {low}" + (f" to {high}" if high is not None else " up"), param=key)
    return value


def _number(given: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = given.get(key, default)
    if not _is_number(value) or not low <= value <= high:
        raise InvalidInput(f"field '{key}' must be a number from {low} to {high}", param=key)
    return value


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


# ---------------------------------------------------------------- responses


def completion(response_id: str, created: int, served_by: str, prompt_tokens: int, choices: list[Choice]) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": served_by,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": choice.text, "refusal": None},
                "logprobs": _logprobs(choice.logprobs),
                "finish_reason": choice.finish_reason,
            }
            for index, choice in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, choices),
        "service_tier": "default",
        "system_fingerprint": None,
    }


def usage(prompt_tokens: int, choices: list[Choice]) -> dict[str, int]:
    completion_tokens = sum(choice.completion_tokens for choice in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def chunk(
    response_id: str,
    created: int,
    served_by: str,
    choices: list[dict[str, Any]],
    *,
    with_usage: bool,
    usage_value: dict[str, int] | None = None,
) -> dict[str, Any]:
    body = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": served_by,
        "choices": choices,
        "service_tier": "default",
        "system_fingerprint": None,
    }
    if with_usage:
        body["usage"] = usage_value
    return body


def delta_choice(delta: Delta, *, logprobs: bool) -> dict[str, Any]:
    return {
        "index": delta.index,
        "delta": {"content": delta.text} if delta.text else {},
        "logprobs": {"content": delta.logprobs, "refusal": None} if logprobs and delta.logprobs else None,
        "finish_reason": delta.finish_reason,
    }


def role_choice(index: int) -> dict[str, Any]:
    return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}


def _logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    return None if entries is None else {"content": entries, "refusal": None}
