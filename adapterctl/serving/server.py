"""`adapterctl serve`: an OpenAI-compatible HTTP server around the runtime, following activations.

    POST /v1/chat/completions   generate (scope generate), whole or streamed (SSE) as it is generated;
                                the body's and the X-Adapter-Version header's `line@vN` name exactly
                                what answered
    GET  /v1/models             served lines and pinned versions (scope generate)
    POST /v1/feedback           feedback on a response issued by any server sharing the database (scope feedback)
    GET  /healthz               liveness and what each line serves (no token)
    GET  /metrics               Prometheus text (scope admin)
    GET  /openapi.json          the OpenAPI document of these routes (`openapi.py`; no token)

A follower thread brings the runtime to the newest activations: it polls the database, and on
PostgreSQL it also LISTENs, so a promote, rollback, canary change or forget takes effect at once; at
most once a minute it also deletes the issued responses older than the retention. While a line runs
a canary, requests for it are routed by end user (`canary_routing`), and the follower checks the
live comparison and aborts the canary when it is worse (`canary_watch`). Each answer is recorded in the
database (`responses.ResponseLog`, group commit) before it is returned, waiting at most
RESPONSE_WAIT_S: a chat never fails because of that record. Feedback goes through a writer
thread that commits whatever arrived meanwhile in one transaction (group commit): each request
waits for its own record to be durable, or answers 503 while the database is locked by other work,
with the record kept queued (a retry of the same feedback is answered from the queue, not stored twice).

Limits (docs/security.md): bodies over 1 MiB are refused with 413 while they are read, chunked or
not; a prompt and its max_tokens must fit the model's context (400 context_length_exceeded); one
request (or batch) generates for at most the request deadline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from fastapi import Request  # at module level: FastAPI resolves the endpoints' annotations here

from adapterctl import canary_watch, feedback, json_input, tokens
from adapterctl.db.types import utcnow
from adapterctl.errors import AdapterctlError, Busy, InvalidInput, NotFound, Unavailable, first_line
from adapterctl.serving import chat_api, openapi, responses
from adapterctl.serving.batching import BatchWriter
from adapterctl.serving.canary_routing import CanaryRouter, Route
from adapterctl.serving.engine import Engine
from adapterctl.serving.follower import Follower
from adapterctl.workspace import Workspace

log = logging.getLogger("adapterctl.serve")
MAX_BODY_BYTES = 1 << 20
TOKEN_CACHE_S = 5.0
"""A token is looked up again at most this long after its last lookup: a revoked token is refused within it.
An expiry is checked at every request, so an expired token is refused from its expiry on."""
TOKEN_CACHE_SIZE = 10_000
SCOPE_NEEDED: dict[str, str | None] = {
    "/v1/chat/completions": "generate",
    "/v1/models": "generate",
    "/v1/feedback": "feedback",
    "/metrics": "admin",
    "/healthz": None,
    "/openapi.json": None,
}
"""The token scope each route needs (None: public). An app with a route missing here is refused when it is built."""
FEEDBACK_WAIT_S = 10.0
"""How long a feedback request waits for its record to be written before answering 503 (it stays queued)."""
RESPONSE_WAIT_S = 2.0
"""How long a chat waits for its issued response to be recorded; then it answers anyway (the record stays queued)."""
PRUNE_EVERY_S = 60.0
"""How often a server deletes the issued responses older than the retention."""
CANARY_CHECK_EVERY_S = 1.0
"""How often a server looks at the live comparison of its lines' canaries."""
RETRY_AFTER_S = 2
ROUTES = ("/v1/chat/completions", "/v1/models", "/v1/feedback", "/healthz", "/metrics", "/openapi.json")


class Metrics:
    """Prometheus metrics (prometheus_client). Paths outside ROUTES count as one `other`, so no request can
    add a series; the served versions and the runtime's counters are read when scraped."""

    def __init__(self, runtime: Engine) -> None:
        from prometheus_client import CollectorRegistry, Counter, Summary, disable_created_metrics

        disable_created_metrics()  # no `_created` series beside each counter: scrapers compute rates themselves
        self.registry = CollectorRegistry()
        self.requests = Counter("adapterctl_requests", "HTTP responses by route and status code.", ["path", "code"], registry=self.registry)
        self.latency = Summary(
            "adapterctl_request_seconds", "Time from request to the end of the response, by route.", ["path"], registry=self.registry
        )
        self.pruned_responses = Counter(
            "adapterctl_pruned_responses", "Issued responses deleted because they were older than the retention.", registry=self.registry
        )
        self.registry.register(_RuntimeCollector(runtime))

    def observe(self, path: str, status: int, seconds: float) -> None:
        route = path if path in ROUTES else "other"
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _RuntimeCollector:
    """The version each line serves and the runtime's counters, as they are at scrape time."""

    def __init__(self, runtime: Engine) -> None:
        self.runtime = runtime

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        served = GaugeMetricFamily(
            "adapterctl_active_version", "The version each line serves (1 on the served one).", labels=["line", "version"]
        )
        for line, label in sorted(self.runtime.served().items()):
            served.add_metric([line, label.split("@")[1]], 1)
        yield served
        for name, meaning in self.runtime.COUNTERS:
            yield CounterMetricFamily(f"adapterctl_{name}", meaning, value=getattr(self.runtime.stats, name))
        yield from self.runtime.metric_families()


class FeedbackWriter(BatchWriter):
    """The feedback of all requests, written in batches (group commit, `BatchWriter`).

    A record submitted again while it waits, or soon after it was written (a client retrying after a
    503), is the same record: it gets the same id.
    """

    what = "feedback records"
    REMEMBERED = 10_000

    def __init__(self, ws: Workspace, max_batch: int = 512) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple, Future] = {}
        self._written: OrderedDict[tuple, int] = OrderedDict()
        super().__init__(ws, max_batch=max_batch, name="adapterctl-feedback-writer")

    def submit(self, line: str, record, key: tuple) -> Future:
        """Queue a record; the future gives its id once written. `key` says which submissions are the same."""
        with self._lock:
            if key in self._pending:
                return self._pending[key]
            done: Future = Future()
            if key in self._written:
                done.set_result(self._written[key])
                return done
            self._pending[key] = done
        self.queue.put((line, record, key, done))
        return done

    def write(self, session, batch) -> list[int]:
        ids = feedback.log_records(session, [(line, record) for line, record, _, _ in batch], actor=self.ws.user)
        responses.rate(
            session,
            [
                (record.request_id, record.rating, record.correction is not None)
                for _, record, _, _ in batch
                if record.rating is not None or record.correction is not None
            ],
        )  # a preference pair rates nothing
        return ids

    def settle(self, batch, result: Sequence[int] = (), error: Exception | None = None) -> None:
        with self._lock:
            for index, (_, _, key, done) in enumerate(batch):
                self._pending.pop(key, None)
                if error is not None:
                    done.set_exception(error)
                    continue
                done.set_result(result[index])
                self._written[key] = result[index]
            while len(self._written) > self.REMEMBERED:
                self._written.popitem(last=False)


def follow_activations(runtime: Engine) -> Callable[[], None]:
    def follow_activations() -> None:
        for swap in runtime.refresh():
            if swap.error:
                log.error("%s", swap.error)
            else:
                log.info(
                    "%s: now serving %s (was %s; verify %.0f ms, load %.0f ms, switch %.1f ms)",
                    swap.line,
                    swap.new,
                    swap.old,
                    swap.verify_s * 1000,
                    swap.load_s * 1000,
                    swap.switch_s * 1000,
                )

    return follow_activations


def unload_revoked(runtime: Engine) -> Callable[[], None]:
    def unload_revoked() -> None:
        for key in runtime.drop_unservable():
            log.info("unloaded %s: it can no longer be served (revoked)", key)

    return unload_revoked


def follow_canaries(router: CanaryRouter, runtime: Engine) -> Callable[[], None]:
    def follow_canaries() -> None:
        runtime.hold(router.refresh())

    return follow_canaries


def watch_canaries(ws: Workspace, router: CanaryRouter, auto_complete: bool) -> Callable[[], None]:
    last = [-CANARY_CHECK_EVERY_S]

    def watch_canaries() -> None:
        if not router.splits or time.monotonic() - last[0] < CANARY_CHECK_EVERY_S:
            return
        last[0] = time.monotonic()
        for line in list(router.splits):
            outcome = canary_watch.check(ws, line, auto_complete=auto_complete)
            if outcome.action:
                log.warning("%s", outcome.message())
                router.refresh()

    return watch_canaries


def prune_responses(issued: responses.ResponseLog, metrics: Metrics) -> Callable[[], None]:
    last = [-PRUNE_EVERY_S]

    def prune_responses() -> None:
        if time.monotonic() - last[0] < PRUNE_EVERY_S:
            return
        last[0] = time.monotonic()  # after a failure too: the follower logs it, the next minute tries again
        if pruned := issued.prune():
            metrics.pruned_responses.inc(pruned)
            log.info("deleted %d issued responses older than the retention (%s)", pruned, issued.retention)

    return prune_responses


def create_app(
    ws: Workspace,
    runtime: Engine,
    *,
    auth: bool = True,
    poll_s: float = 0.5,
    max_body_bytes: int = MAX_BODY_BYTES,
    canary_key_header: str | None = None,
    watch: bool = True,
    auto_complete: bool = False,
):
    """The ASGI application: FastAPI behind a guard; its lifespan runs the follower, the response log and the feedback writer.

    `canary_key_header` names the header that identifies an end user when a request has no `user`;
    `watch` checks the lines' canaries and aborts a worse one (`auto_complete`: completes one not worse)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from sqlalchemy.exc import OperationalError
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    metrics = Metrics(runtime)
    token_cache: dict[str, tuple[float, tokens.Grant | None]] = {}  # by the token's sha256: no secret is kept
    state: dict[str, Any] = {}
    router = CanaryRouter(ws, runtime.lines)
    key_header = canary_key_header.lower() if canary_key_header else None

    @asynccontextmanager
    async def lifespan(app):
        state["writer"] = FeedbackWriter(ws)
        state["issued"] = responses.ResponseLog(ws)
        steps = [
            follow_activations(runtime),
            unload_revoked(runtime),
            follow_canaries(router, runtime),
            *([watch_canaries(ws, router, auto_complete)] if watch else []),
            prune_responses(state["issued"], metrics),
        ]
        state["follower"] = Follower(ws, steps, poll_s)
        yield
        state["follower"].close()  # first: it uses the response log
        state["issued"].close()
        state["writer"].close()

    app = FastAPI(title="adapterctl", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    async def remember(response: responses.IssuedResponse | None, store: bool) -> None:
        """Record an issued response so that feedback can name it on any server sharing the database; wait
        until it is durable, at most RESPONSE_WAIT_S (it stays queued after that). Never raises: a chat
        must not fail because of its record. `store=False` (the request's `store: false`) records
        nothing (nor does it count in a canary's comparison)."""
        if response is None or not store:
            return
        recorded = state["issued"].record(response)
        response_id = response.id
        try:  # shielded: a chat that stops waiting leaves its response queued
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(recorded)), RESPONSE_WAIT_S)
        except asyncio.TimeoutError:
            log.warning("response %s is not recorded after %.0f s (the database is busy); it stays queued", response_id, RESPONSE_WAIT_S)
        except Exception as exc:
            log.error("response %s could not be recorded (%s); feedback on it will be refused", response_id, first_line(exc))

    def cached_scope(secret: str) -> tuple[bool, str | None]:
        cached = token_cache.get(tokens.digest(secret))
        if not cached or time.monotonic() - cached[0] >= TOKEN_CACHE_S:
            return False, None
        grant = cached[1]
        return True, (grant.scope if grant and grant.valid_at(utcnow()) else None)

    def looked_up_scope(secret: str) -> str | None:
        with ws.reading() as session:
            grant = tokens.grant_of(session, secret)
        if len(token_cache) >= TOKEN_CACHE_SIZE:  # random invalid tokens must not grow it without bound
            token_cache.clear()
        token_cache[tokens.digest(secret)] = (time.monotonic(), grant)
        return grant.scope if grant else None

    async def guard(scope, receive, send):
        """Plain ASGI around the app: bearer token and scope, body size (while reading), metrics of every response."""
        if scope["type"] != "http":
            return await app(scope, receive, send)
        started, path, status = time.perf_counter(), scope["path"], [500]

        async def send_noting_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal = await _refusal(path, dict(scope["headers"]))
            if refusal is not None:
                return await refusal(scope, receive, send_noting_status)
            body = await _read_body(receive, max_body_bytes)
            if body is None:
                return await error(413, f"request body larger than {max_body_bytes} bytes")(scope, receive, send_noting_status)
            await app(scope, _replay(body, receive), send_noting_status)
        except _Disconnected:
            status[0] = 499  # the client went away before its request was read: nobody to answer
        finally:
            metrics.observe(path, status[0], time.perf_counter() - started)

    async def _refusal(path: str, headers: dict[bytes, bytes]):
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            return error(413, f"request body larger than {max_body_bytes} bytes")
        needed = SCOPE_NEEDED.get(path)
        if not (auth and needed):
            return None
        header = headers.get(b"authorization", b"").decode("latin-1")
        secret = header[7:].strip() if header.lower().startswith("bearer ") else ""
        known, token_scope = cached_scope(secret)
        if secret and not known:  # tokens are looked up once per TOKEN_CACHE_S, off the event loop
            try:
                token_scope = await run_in_threadpool(looked_up_scope, secret)
            except OperationalError as exc:
                return busy(exc)
        if token_scope is None:
            return error(401, "missing or invalid bearer token", "authentication_error", code="invalid_api_key")
        if not tokens.allows(token_scope, needed):
            return error(403, f"this token's scope is {token_scope}; {path} needs {needed}", "permission_error")
        return None

    @app.exception_handler(AdapterctlError)
    async def known_error(request: Request, exc: AdapterctlError):
        if isinstance(exc, Busy):
            return busy(exc)
        if isinstance(exc, Unavailable):  # --engine vllm: no upstream can take it now
            log.warning("answering 503: %s", exc)
            return error(503, str(exc), "server_error", code=exc.code, headers={"Retry-After": str(RETRY_AFTER_S)})
        status = 404 if isinstance(exc, NotFound) else 400 if exc.exit_code == 2 else 500
        return error(status, str(exc), code=exc.code, param=exc.param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):  # routing: unknown URLs (404), wrong methods (405)
        where = f"{request.method} {request.url.path}"
        message, code = {404: (f"Invalid URL ({where})", "unknown_url"), 405: (f"Method not allowed ({where})", "method_not_allowed")}.get(
            exc.status_code, (str(exc.detail), None)
        )
        return error(exc.status_code, message, code=code, headers=dict(exc.headers or {}))

    @app.exception_handler(OperationalError)
    async def database_error(request: Request, exc: OperationalError):
        return busy(exc)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception):  # logged with its traceback by the server
        return error(500, "the server failed to answer this request; its log says why", "server_error")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        asked = chat_api.parse(await body_of(request), ws.settings.max_field_bytes)
        started = time.perf_counter()
        response_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        line = asked.model.split("@")[0]
        user = asked.user if asked.user is not None else request.headers.get(key_header) if key_header else None
        issue = _Issue(response_id, line, asked, router.route(asked.model, user, runtime.loaded_versions()), started)
        try:
            if asked.stream:
                stream = await run_in_threadpool(lambda: runtime.stream(issue.route.model, asked.messages, asked.sampling))
                return StreamingResponse(
                    _events(stream, asked, issue, created, remember),
                    media_type="text/event-stream",
                    headers={"X-Adapter-Version": stream.served_by},
                )
            answer = await run_in_threadpool(lambda: runtime.generate(issue.route.model, asked.messages, asked.sampling))
        except Exception as exc:
            if issue.route.arm is not None:  # a routed request: its line is served, and a failure counts against its side
                await remember(issue.failed(issue.route.model if "@" in issue.route.model else runtime.served()[line], exc), asked.store)
            raise
        await remember(issue.answered(answer.served_by, [c.text for c in answer.choices]), asked.store)
        return JSONResponse(
            chat_api.completion(response_id, created, answer.served_by, answer.prompt_tokens, answer.choices),
            headers={"X-Adapter-Version": answer.served_by},
        )

    @app.get("/v1/models")
    async def models():
        names = sorted(runtime.served()) + runtime.loaded_versions()
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "owned_by": "adapterctl", "served_by": runtime.served().get(name, name)} for name in names
            ],
        }

    @app.post("/v1/feedback")
    async def post_feedback(request: Request):
        body = await body_of(request)
        response_id = body.get("response_id")
        if not isinstance(response_id, str) or len(response_id) > responses.MAX_ID_CHARS or not response_id.isprintable():
            # looked up in the database: PostgreSQL refuses NUL in a query, and no id a server issued is longer or unprintable
            raise InvalidInput(
                f"field 'response_id' is required: the id of a chat completion a server returned (at most "
                f"{responses.MAX_ID_CHARS} printable characters)",
                param="response_id",
            )
        allowed = {"rating", "correction", "chosen", "rejected", "source", "tags"}
        if unknown := sorted(set(body) - allowed - {"response_id", "choice"}):
            raise InvalidInput(
                f"unknown field {unknown[0]!r}; feedback takes response_id, choice, {', '.join(sorted(allowed))}", param=unknown[0]
            )
        choice = body.get("choice", 0)
        if isinstance(choice, bool) or not isinstance(choice, int) or choice < 0:
            raise InvalidInput("field 'choice' must be the index of one of the response's choices (0 for the first)", param="choice")
        answered = await run_in_threadpool(state["issued"].lookup, response_id)
        if answered is None:
            raise NotFound(
                f"response {response_id!r} is unknown: it was not issued by a server sharing this database, or was not stored "
                f"(store: false), or is older than the retention ({ws.settings.responses_retention_days:g} days)",
                param="response_id",
            )
        if choice >= len(answered.answers):
            raise InvalidInput(
                f"field 'choice' is {choice}, but response {response_id!r} has {len(answered.answers)} choice(s)", param="choice"
            )
        record = feedback.parse_record(
            {
                **{k: body[k] for k in allowed if k in body},
                "prompt": answered.prompt,
                "response": answered.answers[choice],
                "adapter_version": answered.served_by,
                "request_id": response_id,
            },
            max_field_bytes=ws.settings.max_field_bytes,
            issued=True,
        )
        written = state["writer"].submit(answered.line, record, (response_id, record.content_hash))
        try:  # shielded: a request that stops waiting leaves its record queued
            feedback_id = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(written)), FEEDBACK_WAIT_S)
        except asyncio.TimeoutError:
            raise Busy("the database is busy; the feedback is queued and will be stored (sending it again is safe)") from None
        return {"id": feedback_id, "response_id": response_id, "adapter_version": answered.served_by}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "serving": runtime.served(), "listening": state["follower"].listening if "follower" in state else False}

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST

        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    described = openapi.document(max_field_bytes=ws.settings.max_field_bytes, max_body_bytes=max_body_bytes)

    @app.get("/openapi.json")
    async def openapi_document():
        return described

    if unlisted := sorted({getattr(route, "path", "") for route in app.routes} - set(SCOPE_NEEDED)):
        raise RuntimeError(f"routes without a token scope in SCOPE_NEEDED (None for a public one): {', '.join(unlisted)}")
    guard.app = app  # type: ignore[attr-defined]  # the application behind the guard: its routes, for tests and tools that list them
    return guard


@dataclass(frozen=True)
class _Issue:
    """One chat request, as the response log records it: its answer, or a server error on a canary's side."""

    id: str
    line: str
    asked: chat_api.ChatRequest
    route: Route
    started: float

    def answered(self, served_by: str, answers: list[str], error: str | None = None) -> responses.IssuedResponse:
        return responses.IssuedResponse(
            self.id,
            self.line,
            served_by,
            self.asked.messages,
            answers,
            self.asked.user,
            canary_id=self.route.canary_id,
            arm=self.route.arm,
            latency_ms=(time.perf_counter() - self.started) * 1000,
            error=error,
        )

    def failed(self, served_by: str, exc: Exception) -> responses.IssuedResponse | None:
        """The record of a failure that counts against a canary's side: the generation itself failed (a
        500), on a request the canary routed. A refused request or an unavailable upstream is not the
        version's fault."""
        refused = isinstance(exc, AdapterctlError) and (exc.exit_code == 2 or isinstance(exc, (NotFound, Unavailable, Busy)))
        return None if self.route.arm is None or refused else self.answered(served_by, [], first_line(exc))


async def _events(stream, asked: chat_api.ChatRequest, issue: _Issue, created: int, remember) -> AsyncIterator[str]:
    """The server-sent events of a streamed answer: a role chunk per choice, the pieces as they come, a
    finish_reason per choice, the usage when asked for, then [DONE]; or an error event where it failed."""
    from starlette.concurrency import iterate_in_threadpool

    include_usage, logprobs, response_id = asked.include_usage, asked.sampling.logprobs, issue.id

    def event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        body = chat_api.chunk(response_id, created, stream.served_by, choices, with_usage=include_usage, usage_value=usage)
        return f"data: {json.dumps(body)}\n\n"

    yield event([chat_api.role_choice(index) for index in range(asked.sampling.n)])
    try:
        async for delta in iterate_in_threadpool(iter(stream)):
            yield event([chat_api.delta_choice(delta, logprobs=logprobs)])
    except Exception as exc:  # the generation failed midway: say so, never end as if the answer were whole
        log.exception("streamed generation for %s failed", stream.served_by)
        yield (
            "data: "
            + json.dumps(
                {"error": {"message": f"generation failed: {first_line(exc)}", "type": "server_error", "param": None, "code": None}}
            )
            + "\n\n"
        )
        await remember(issue.failed(stream.served_by, exc), asked.store)
        return
    await remember(issue.answered(stream.served_by, [c.text for c in stream.choices]), asked.store)
    if include_usage:
        yield event([], chat_api.usage(stream.prompt_tokens, stream.choices))
    yield "data: [DONE]\n\n"


def error(
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
):
    """An error in OpenAI's shape: {"error": {message, type, param, code}}."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status, headers=headers)


def busy(exc: Exception):
    """503 with Retry-After: the database is locked by other work or unreachable; the request may be sent again."""
    log.warning("answering 503: %s", first_line(exc))
    message = str(exc) if isinstance(exc, Busy) else f"the database is busy ({first_line(exc)}); try again"
    return error(503, message, "server_error", code="database_busy", headers={"Retry-After": str(RETRY_AFTER_S)})


class _Disconnected(Exception):
    """The client closed the connection before its request body was read."""


async def _read_body(receive, limit: int) -> bytes | None:
    """The whole request body, or None as soon as it passes `limit` bytes (chunked or not: counted as read)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive):
    """A receive() that hands the app the body read already, then what the client sends next (a disconnect)."""
    delivered = False

    async def receive_again():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again


async def body_of(request: Request) -> dict[str, Any]:
    try:
        body = json_input.loads(await request.body())
    except InvalidInput as exc:
        raise InvalidInput(f"body is {exc}") from None
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object")
    return body
