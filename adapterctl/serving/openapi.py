"""The OpenAPI 3.1 document of `adapterctl serve` (`GET /openapi.json`): every route, the request fields the
server accepts with the types and bounds its validators enforce (`chat_api.parse`, the feedback route,
`feedback.parse_record`), and every status code a route answers.

What the document calls invalid, the server refuses with a 4xx. What it calls valid may still be refused for
what a schema cannot say: a model that is not served (404), a prompt and `max_tokens` beyond the context
(400), `top_logprobs` without `logprobs`, an unknown response id (404), text longer in UTF-8 bytes than the
field limit. The CI fuzzes the server from this document (tests/test_api_fuzz.py).
"""

from __future__ import annotations

from typing import Any

from adapterctl import __version__, feedback
from adapterctl.serving import chat_api, responses
from adapterctl.serving.completion import MAX_CHOICES, MAX_STOP_STRINGS, MAX_TOP_LOGPROBS

NO_NUL = r"^[^\u0000]*$"
"""Text PostgreSQL can store (chat_api: `user`)."""
NOT_BLANK = r"^[^\u0000]*\S[^\u0000]*$"
"""Text that is not empty, not only whitespace, and has no NUL character (feedback._text)."""
NO_CONTROL = r"^[^\u0000-\u001f\u007f-\u009f]*$"
"""No control characters (the server refuses every unprintable character: `str.isprintable`)."""
PRINTABLE_NOT_BLANK = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
"""Not blank, and no control characters (feedback._short_text; it also refuses other unprintable characters)."""
EMPTY = {
    "description": "Accepted while empty, as in a message a response returned.",
    "anyOf": [{"type": "null"}, {"enum": ["", 0, False]}, {"type": "array", "maxItems": 0}, {"type": "object", "maxProperties": 0}],
}
ERROR_STATUSES = {
    400: "A field is wrong or a parameter is not supported; `error.param` names it.",
    401: "No bearer token, or an unknown one.",
    403: "The token's scope does not allow this route.",
    404: "Not found (the model or the response id named in the body).",
    413: "The request body is larger than the limit.",
    500: "The server failed to answer this request; its log says why.",
    503: "The database is busy (`database_busy`) or no upstream can take the request (`upstream_unavailable`); retry after `Retry-After` seconds.",
}


def document(*, max_field_bytes: int = feedback.DEFAULT_MAX_FIELD_BYTES, max_body_bytes: int = 1 << 20) -> dict[str, Any]:
    """The document for a server with these limits (`Settings.max_field_bytes`, the body limit)."""
    generate, give_feedback, admin = (_operation_security(scope) for scope in ("generate", "feedback", "admin"))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "adapterctl",
            "version": __version__,
            "description": "OpenAI-compatible chat completions served by adapter versions, and feedback on their answers. "
            'Errors have OpenAI\'s shape: {"error": {message, type, param, code}}.',
        },
        "paths": {
            "/v1/chat/completions": {
                "post": {
                    "operationId": "createChatCompletion",
                    "summary": "An answer, whole or streamed (server-sent events).",
                    **generate,
                    "requestBody": _json_body(_chat_request(max_field_bytes), max_body_bytes),
                    "responses": {
                        "200": {
                            "description": "The answer; `model` and X-Adapter-Version name the version that produced it.",
                            "headers": {
                                "X-Adapter-Version": {
                                    "required": True,
                                    "schema": {"type": "string"},
                                    "description": "line@vN or line@base: what answered.",
                                }
                            },
                            "content": {
                                "application/json": {"schema": _chat_completion()},
                                "text/event-stream": {"schema": _stream_event()},
                            },
                        },
                        **_errors(400, 401, 403, 404, 413, 500, 503),
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "operationId": "listModels",
                    "summary": "The lines served, and the versions loaded for requests that name them.",
                    **generate,
                    "responses": {"200": _json("The models.", _model_list()), **_errors(401, 403, 500, 503)},
                }
            },
            "/v1/feedback": {
                "post": {
                    "operationId": "createFeedback",
                    "summary": "Feedback on a response that a server sharing the database issued.",
                    **give_feedback,
                    "requestBody": _json_body(_feedback_request(max_field_bytes), max_body_bytes),
                    "responses": {"200": _json("The feedback record.", _feedback_response()), **_errors(400, 401, 403, 404, 413, 500, 503)},
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness, and what each line serves.",
                    "security": [],
                    "responses": {"200": _json("Alive.", _health()), **_errors(500)},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics.",
                    **admin,
                    "responses": {
                        "200": {"description": "Prometheus text format.", "content": {"text/plain": {"schema": {"type": "string"}}}},
                        **_errors(401, 403, 500, 503),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "security": [],
                    "responses": {"200": _json("The OpenAPI document.", {"type": "object"}), **_errors(500)},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An adapterctl token (`adapterctl token create --scope generate|feedback|admin`). "
                    "admin allows every route; each operation's x-adapterctl-scope names the scope it needs.",
                }
            },
            "schemas": {"Error": _error_schema()},
        },
    }


def _operation_security(scope: str) -> dict[str, Any]:
    return {"security": [{"bearer": []}], "x-adapterctl-scope": scope}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _json_body(schema: dict[str, Any], max_body_bytes: int) -> dict[str, Any]:
    return {
        "required": True,
        "description": f"A JSON object of at most {max_body_bytes} bytes: duplicate keys, NaN, Infinity and numbers "
        "out of range are refused.",
        "content": {"application/json": {"schema": schema}},
    }


def _errors(*statuses: int) -> dict[str, Any]:
    documented: dict[str, Any] = {}
    for status in statuses:
        documented[str(status)] = _json(ERROR_STATUSES[status], {"$ref": "#/components/schemas/Error"})
        if status == 503:
            documented[str(status)]["headers"] = {"Retry-After": {"required": True, "schema": {"type": "string"}}}
    return documented


def _error_schema() -> dict[str, Any]:
    nullable_text = {"type": ["string", "null"]}
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string", "minLength": 1},
                    "type": {"type": "string"},
                    "param": nullable_text,
                    "code": nullable_text,
                },
            }
        },
    }


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    """`null` counts as not given."""
    if isinstance(schema.get("type"), str):
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _text(max_chars: int, pattern: str = NOT_BLANK) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_chars, "pattern": pattern}


def _number(low: float, high: float) -> dict[str, Any]:
    return _or_null({"type": "number", "minimum": low, "maximum": high})


def _integer(low: int, high: int | None = None) -> dict[str, Any]:
    return _or_null({"type": "integer", "minimum": low, **({"maximum": high} if high is not None else {})})


def _chat_request(max_field_bytes: int) -> dict[str, Any]:
    text_part = {
        "type": "object",
        "required": ["type", "text"],
        "properties": {"type": {"const": "text"}, "text": {"type": "string", "pattern": NO_NUL}},
    }
    message = {
        "type": "object",
        "required": ["role", "content"],
        "additionalProperties": False,
        "properties": {
            "role": {"enum": list(chat_api.ROLES), "description": "developer is read as system."},
            "content": {
                "anyOf": [_text(max_field_bytes), {"type": "array", "minItems": 1, "items": text_part}],
                "description": f"Text, or text parts joined with newlines; at most {max_field_bytes} bytes.",
            },
            **{key: EMPTY for key in chat_api.ECHOED_NULL_KEYS},
        },
    }
    bool_or_null = {"type": ["boolean", "null"]}
    implemented = {
        "model": {
            "type": "string",
            "minLength": 1,
            "description": "A line (its active version), line@vN (an approved version) or line@base.",
        },
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": message,
            "contains": {"properties": {"role": {"const": "user"}}},
            "description": "At least one user message; prompt and max_tokens must fit the model's context.",
        },
        "max_tokens": _integer(1),
        "max_completion_tokens": _integer(1),
        "temperature": {
            "anyOf": [{"const": 0}, {"type": "number", "minimum": chat_api.MIN_TEMPERATURE, "maximum": 2}, {"type": "null"}],
            "description": "Default 0 (greedy).",
        },
        "top_p": _or_null({"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
        "n": _integer(1, MAX_CHOICES),
        "stop": {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "minItems": 1, "maxItems": MAX_STOP_STRINGS, "items": {"type": "string", "minLength": 1}},
                {"type": "null"},
            ]
        },
        "seed": _integer(-chat_api.MAX_SEED - 1, chat_api.MAX_SEED),
        "frequency_penalty": _number(-2, 2),
        "presence_penalty": _number(-2, 2),
        "logit_bias": _or_null(
            {
                "type": "object",
                "maxProperties": chat_api.MAX_LOGIT_BIAS,
                "propertyNames": {"pattern": "^[0-9]+$", "maxLength": chat_api.MAX_TOKEN_ID_DIGITS},
                "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
                "description": "Token ids of the model's vocabulary, as strings.",
            }
        ),
        "logprobs": bool_or_null,
        "top_logprobs": {**_integer(0, MAX_TOP_LOGPROBS), "description": "Needs logprobs: true."},
        "stream": bool_or_null,
        "stream_options": _or_null(
            {
                "type": "object",
                "additionalProperties": False,
                "description": "Only with stream: true.",
                "properties": {"include_usage": bool_or_null, "include_obfuscation": bool_or_null},
            }
        ),
        "user": _or_null({"type": "string", "maxLength": chat_api.MAX_USER_CHARS, "pattern": NO_NUL}),
        "safety_identifier": _or_null({"type": "string", "maxLength": chat_api.MAX_USER_CHARS, "pattern": NO_NUL}),
        "store": bool_or_null,
        "service_tier": {"enum": ["auto", "default", None]},
        "modalities": {"anyOf": [{"const": ["text"]}, {"type": "null"}]},
        "response_format": _or_null({"type": "object", "required": ["type"], "properties": {"type": {"const": "text"}}}),
    }
    no_effect = {
        "prompt_cache_key": {"type": ["string", "null"]},
        "prompt_cache_options": {"type": ["object", "null"]},
        "prompt_cache_retention": {"type": ["string", "null"]},
    }
    unsupported = {
        key: {"type": "null", "description": f"Not supported ({what}): refused unless null."} for key, what in chat_api.UNSUPPORTED.items()
    }
    return {
        "type": "object",
        "required": ["model", "messages"],
        "additionalProperties": False,
        "properties": {**implemented, **no_effect, **unsupported},
    }


def _feedback_request(max_field_bytes: int) -> dict[str, Any]:
    text = _or_null(_text(max_field_bytes))
    given = [
        {"required": ["rating"], "properties": {"rating": {"type": "number"}}},
        {"required": ["correction"], "properties": {"correction": {"type": "string"}}},
        {"required": ["chosen", "rejected"], "properties": {"chosen": {"type": "string"}, "rejected": {"type": "string"}}},
    ]
    return {
        "type": "object",
        "required": ["response_id"],
        "additionalProperties": False,
        "anyOf": given,
        "description": "At least one of rating, correction, or chosen and rejected (given together, and different).",
        "properties": {
            "response_id": {
                "type": "string",
                "maxLength": responses.MAX_ID_CHARS,
                "pattern": NO_CONTROL,
                "description": "The id of a chat completion a server sharing the database returned.",
            },
            "choice": {"type": "integer", "minimum": 0, "description": "The index of the choice the feedback is about (default 0)."},
            "rating": _number(-1, 1),
            "correction": text,
            "chosen": text,
            "rejected": text,
            "source": _or_null(_text(256, PRINTABLE_NOT_BLANK)),
            "tags": _or_null({"type": "array", "maxItems": feedback.MAX_TAGS, "items": _text(64)}),
        },
    }


def _chat_completion() -> dict[str, Any]:
    integer = {"type": "integer", "minimum": 0}
    choice = {
        "type": "object",
        "required": ["index", "message", "finish_reason"],
        "properties": {
            "index": integer,
            "message": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {"role": {"const": "assistant"}, "content": {"type": "string"}},
            },
            "logprobs": {"type": ["object", "null"]},
            "finish_reason": {"enum": ["stop", "length"]},
        },
    }
    return {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "created": integer,
            "model": {"type": "string"},
            "choices": {"type": "array", "minItems": 1, "items": choice},
            "usage": {
                "type": "object",
                "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
                "properties": {"prompt_tokens": integer, "completion_tokens": integer, "total_tokens": integer},
            },
        },
    }


def _stream_event() -> dict[str, Any]:
    """One server-sent event (OpenAPI before 3.2: the schema of a stream describes each event)."""
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "type": "string",
                "description": "A chat.completion.chunk as JSON; an error object as JSON where the generation failed; [DONE] last.",
            }
        },
    }


def _model_list() -> dict[str, Any]:
    model = {
        "type": "object",
        "required": ["id", "object", "owned_by", "served_by"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "model"},
            "owned_by": {"type": "string"},
            "served_by": {"type": "string", "description": "line@vN or line@base."},
        },
    }
    return {
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": model}},
    }


def _feedback_response() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "response_id", "adapter_version"],
        "properties": {"id": {"type": "integer"}, "response_id": {"type": "string"}, "adapter_version": {"type": "string"}},
    }


def _health() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["status", "serving"],
        "properties": {
            "status": {"const": "ok"},
            "serving": {"type": "object", "additionalProperties": {"type": "string"}},
            "listening": {"type": "boolean"},
        },
    }
