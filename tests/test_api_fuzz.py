"""Schema-driven fuzzing of the HTTP API (schemathesis): a real `adapterctl serve` on loopback, on SQLite and on
PostgreSQL, fuzzed from the OpenAPI document it serves at /openapi.json.

Each operation gets requests that break its schema (negative: wrong types, values out of bounds, missing
fields, unknown fields, no or a malformed token), then requests that fit it (positive), each with a token of
the scope it needs. Every response must be documented (status, content type, headers, body schema), no
response may be a 5xx, every request that breaks the schema must be refused with a 4xx carrying OpenAI's error
JSON, and the refused requests must store nothing: feedback, issued responses and audit events are counted
around the negative phase. Generated model names and response ids are often swapped for served models and
real response ids, so that the fuzzing reaches generation and the feedback parser, not only the 404s.
Generation is derandomized and bounded (EXAMPLES per operation and phase). FOUND keeps the values that made the
server fail (NUL, half surrogate pairs, huge token ids), which schemathesis does not generate by itself.
"""

from __future__ import annotations

import json
import re
import shutil
from contextlib import ExitStack
from types import SimpleNamespace

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import func, select

from adapterctl import base_models, lines
from adapterctl.config import Settings
from adapterctl.db import migrate
from adapterctl.db.models import AuditEvent, Feedback, IssuedResponse
from adapterctl.serving import chat_api, openapi
from adapterctl.serving.runtime import Runtime
from adapterctl.serving.server import create_app
from adapterctl.workspace import Workspace
from tests.conftest import BACKENDS, Cli, require_backend, temporary_pg_database
from tests.test_runtime import approved_version, promote
from tests.test_server import CHAT, Server

pytestmark = pytest.mark.slow
MODELS = ["facts", "facts@v1", "facts@base"]
EXAMPLES = {"POST /v1/chat/completions": 50, "POST /v1/feedback": 100}
"""Examples per phase of the operations with a body; the others (no parameters) get GET_EXAMPLES."""
GET_EXAMPLES = 5
FIELD_BYTES = 512
"""The server's text field limit (ADAPTERCTL_MAX_FIELD_BYTES): small, so that the fuzzing reaches it (and generating
strings just past 32 KiB that match the fields' patterns would take minutes)."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]
STORED = (Feedback, IssuedResponse, AuditEvent)
VALID_ID = r"[^\x00-\x1f\x7f-\x9f]{0,64}"
"""A response_id the document calls valid."""


@pytest.fixture(scope="module", params=BACKENDS)
def api(request, tmp_path_factory, tiny_model):
    """A server for line `facts` (v1 approved and active) on a fresh database of each backend, with a token of each scope and
    three issued responses to give feedback on (two of them with two choices)."""
    require_backend(request.param)
    home = tmp_path_factory.mktemp(f"fuzz-{request.param}") / "home"
    home.mkdir()
    with ExitStack() as stack:
        if request.param == "sqlite":
            shutil.copy(request.getfixturevalue("sqlite_template"), home / "adapterctl.db")
            url = f"sqlite:///{home / 'adapterctl.db'}"
        else:
            url = stack.enter_context(temporary_pg_database())
            migrate.upgrade(url)
        settings_ = Settings(home=home, db_url=url, user="tester")
        ws = Workspace(settings_)
        stack.callback(ws.close)
        with ws.transaction() as session:
            base_models.register_base_model(session, name="tiny", source=str(tiny_model), actor="tester")
            lines.create_line(
                session, name="facts", base="tiny", actor="tester", settings=lines.LineSettings(min_examples=2, reference_size=0)
            )
        promote(ws, "facts", approved_version(ws, "facts", tiny_model, seed=1))
        cli = Cli(settings_)
        token = {scope: cli("token", "create", "--scope", scope).stdout.strip() for scope in ("generate", "feedback", "admin")}
        server = Server(cli.env_with(ADAPTERCTL_MAX_FIELD_BYTES=str(FIELD_BYTES)), "--request-deadline", "0.5")
        stack.callback(server.stop)
        issued = [server.chat(token["generate"], model=model, n=2)[1]["id"] for model in ("facts", "facts@base")]
        issued.append(server.chat(token["generate"])[1]["id"])
        yield SimpleNamespace(ws=ws, server=server, token=token, issued=issued, url=f"http://127.0.0.1:{server.port}")


def stored(ws) -> dict[str, int]:
    with ws.reading() as session:
        return {table.__tablename__: session.scalar(select(func.count()).select_from(table)) for table in STORED}


def test_the_document_describes_every_route_the_server_has(api):
    """The served document is valid OpenAPI 3.1 and covers every route and method of the app; a route added without
    its description fails here. Its security matches the server's: documented-public routes answer without a token."""
    status, served, _ = api.server.call("GET", "/openapi.json")
    assert status == 200 and served == json.loads(json.dumps(openapi.document(max_field_bytes=FIELD_BYTES)))
    schemathesis.openapi.from_dict(served).validate()
    app = create_app(api.ws, Runtime(api.ws, device="cpu"))
    routes = {(route.path, method.lower()) for route in app.app.routes for method in route.methods}
    documented = {(path, method) for path, operations in served["paths"].items() for method in operations}
    assert routes == documented
    for path, operations in served["paths"].items():
        for method, operation in operations.items():
            if method == "get":
                assert api.server.call("GET", path)[0] == (401 if operation["security"] else 200), path
            if operation["security"]:
                scope = operation["x-adapterctl-scope"]
                other = "feedback" if scope == "generate" else "generate"
                assert api.server.call(method.upper(), path, {}, token=api.token[other])[0] == 403, path


def test_the_chat_request_schema_names_every_parameter_the_server_knows():
    properties = openapi.document()["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "properties"
    ]
    assert set(properties) == {*chat_api.IMPLEMENTED, *chat_api.NO_EFFECT, *chat_api.UNSUPPORTED}


FOUND = {  # hostile values beyond what schemathesis generates, probed field by field: how each failed before it was fixed
    "logit_bias key of 5,000 digits (500: int() refuses over 4,300 digits)": ("/v1/chat/completions", {"logit_bias": {"1" * 5000: 1}}),
    "unknown field set to null (accepted, though the document refuses it)": ("/v1/chat/completions", {"temprature": None}),
    "user with NUL (PostgreSQL: 200, but the response and its whole batch were not recorded)": ("/v1/chat/completions", {"user": "u\x00"}),
    "user with half a surrogate pair (200, but not recorded)": ("/v1/chat/completions", {"user": "\ud800"}),
    "unknown field named with half a surrogate pair (500: the error could not be encoded)": ("/v1/chat/completions", {"\udfff": 1}),
    "unknown message key named with half a surrogate pair (500)": (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x", "\ud800": 1}]},
    ),
    "response_id with NUL (PostgreSQL: 500)": ("/v1/feedback", {"response_id": "chatcmpl-\x00", "rating": 1}),
    "response_id with half a surrogate pair (500)": ("/v1/feedback", {"response_id": "chatcmpl-\ud800", "rating": 1}),
    "unknown feedback field named with half a surrogate pair (500)": ("/v1/feedback", {"rating": 1, "\ud800": 1}),
}


@pytest.mark.parametrize("case", FOUND)
def test_what_the_fuzzing_found_is_refused_with_a_4xx_and_stores_nothing(api, case):
    path, fields = FOUND[case]
    body = (
        {"model": "facts", "messages": CHAT, "max_tokens": 2, **fields}
        if path == "/v1/chat/completions"
        else {"response_id": api.issued[0], **fields}
    )
    before = stored(api.ws)
    status, answer, _ = api.server.call("POST", path, body, token=api.token["admin"])
    assert status == 400 and answer["error"]["type"] == "invalid_request_error" and answer["error"]["message"], answer
    assert stored(api.ws) == before


OPERATIONS = [
    ("POST", "/v1/chat/completions", "generate"),
    ("POST", "/v1/feedback", "feedback"),
    ("GET", "/v1/models", "generate"),
    ("GET", "/metrics", "admin"),
    ("GET", "/healthz", None),
    ("GET", "/openapi.json", None),
]


@pytest.mark.parametrize("method, path, scope", OPERATIONS, ids=[f"{method} {path}" for method, path, _ in OPERATIONS])
def test_fuzzed_requests_are_answered_as_documented_and_refusals_store_nothing(api, method, path, scope):
    # A body to break: the negative cases break it, not the token (missing tokens: the GETs, ignored_auth, the test above).
    generation = {"generation": {"with-security-parameters": False}} if method == "POST" else {}
    config = schemathesis.Config.from_dict({"auth": {"openapi": {"bearer": {"bearer": api.token[scope]}}}, **generation} if scope else {})
    operation = schemathesis.openapi.from_url(f"{api.url}/openapi.json", config=config)[path][method]
    if scope:  # the public routes take no parameter, body or token: nothing to get wrong
        before = stored(api.ws)
        fuzz(api, operation, GenerationMode.NEGATIVE)
        assert stored(api.ws) == before, "a refused request stored something"
    fuzz(api, operation, GenerationMode.POSITIVE)


def fuzz(api, operation, mode: GenerationMode) -> None:
    examples = EXAMPLES.get(operation.label, GET_EXAMPLES)

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @given(
        case=operation.as_strategy(generation_mode=mode),
        model=st.sampled_from([*MODELS, None]),
        response_id=st.sampled_from([*api.issued, None]),
        choice=st.sampled_from([0, 1, None]),
    )
    def exchange(case, model, response_id, choice):
        body = case.body if isinstance(case.body, dict) else {}
        # Each swap replaces a valid value with another valid one, so that a negative case stays negative.
        if model and isinstance(body.get("model"), str) and body["model"]:
            body["model"] = model
        if response_id and isinstance(body.get("response_id"), str) and re.fullmatch(VALID_ID, body["response_id"]):
            body["response_id"] = response_id
        if choice is not None and type(body.get("choice")) is int and body["choice"] >= 0:
            body["choice"] = choice
        response = case.call(base_url=api.url, timeout=60)
        case.validate_response(response, checks=CHECKS)
        if response.status_code >= 400:
            error = response.json()["error"]
            assert error["message"] and error["type"], error

    exchange()
