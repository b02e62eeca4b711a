"""`adapterctl serve`: an OpenAI-compatible HTTP server around the runtime, following activations.

    POST /v1/chat/completions   generate (scope generate), whole or streamed (SSE) as it is generated;
                                the body's and the X-Adapter-Version header's `line@vN` name exactly
                                what answered
    GET  /v1/models             served lines and pinned versions (scope generate)
    POST /v1/feedback           feedback on a response this server issued (scope feedback)
    GET  /healthz               liveness and what each line serves (no token)
    GET  /metrics               Prometheus text (scope admin)

A follower thread brings the runtime to the newest activations: it polls the database, and on
PostgreSQL it also LISTENs, so a promote, rollback or forget takes effect at once. Feedback goes
through a writer thread that commits whatever arrived meanwhile in one transaction (group commit):
each request still waits for its own record to be durable.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict, defaultdict
from concurrent.futures import Future
from typing import Any

from fastapi import Request  # at module level: FastAPI resolves the endpoints' annotations here

from adapterctl import feedback, tokens
from adapterctl.errors import AdapterctlError, InvalidInput, NotFound
from adapterctl.serving.runtime import Runtime
from adapterctl.workspace import Workspace

log = logging.getLogger("adapterctl.serve")
MAX_BODY_BYTES = 1 << 20
REMEMBERED_RESPONSES = 100_000
TOKEN_CACHE_S = 5.0


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.latency_count: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()

    def observe(self, path: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(path, status)] += 1
            self.latency_sum[path] += seconds
            self.latency_count[path] += 1

    def render(self, runtime: Runtime) -> str:
        lines = ["# TYPE adapterctl_requests_total counter"]
        with self.lock:
            lines += [f'adapterctl_requests_total{{path="{p}",code="{c}"}} {n}' for (p, c), n in sorted(self.requests.items())]
            lines += ["# TYPE adapterctl_request_seconds summary"]
            for path in sorted(self.latency_count):
                lines += [f'adapterctl_request_seconds_sum{{path="{path}"}} {self.latency_sum[path]:.6f}',
                          f'adapterctl_request_seconds_count{{path="{path}"}} {self.latency_count[path]}']
        lines += ["# TYPE adapterctl_active_version gauge"]
        lines += [f'adapterctl_active_version{{line="{line}",version="{label.split("@")[1]}"}} 1' for line, label in sorted(runtime.served().items())]
        stats = runtime.stats
        for name, value in (("swaps", stats.swaps), ("failed_loads", stats.failed_loads), ("batches", stats.batches),
                            ("mixed_batches", stats.mixed_batches)):
            lines += [f"# TYPE adapterctl_{name}_total counter", f"adapterctl_{name}_total {value}"]
        return "\n".join(lines) + "\n"


class FeedbackWriter:
    """One thread writes the feedback of all requests, in batches: each batch is one transaction."""

    def __init__(self, ws: Workspace, max_batch: int = 512) -> None:
        self.ws, self.max_batch = ws, max_batch
        self.queue: queue.Queue[tuple[str, Any, Future] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="adapterctl-feedback-writer", daemon=True)
        self.thread.start()

    def submit(self, line: str, record) -> int:
        done: Future = Future()
        self.queue.put((line, record, done))
        return done.result(timeout=30)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.queue.put(None)
                    break
                batch.append(item)
            self._write(batch)

    def _write(self, batch) -> None:
        try:
            with self.ws.transaction() as session:
                ids = feedback.log_records(session, [(line, record) for line, record, _ in batch], actor=self.ws.user)
        except Exception as exc:  # the whole batch failed: tell every waiting request
            for _, _, done in batch:
                done.set_exception(exc)
            return
        for (_, _, done), feedback_id in zip(batch, ids):
            done.set_result(feedback_id)


class Follower:
    """Keeps the runtime on the newest activations: polling, plus PostgreSQL notifications."""

    def __init__(self, ws: Workspace, runtime: Runtime, poll_s: float) -> None:
        self.ws, self.runtime, self.poll_s = ws, runtime, poll_s
        self.stop = threading.Event()
        self.listening = False
        self.thread = threading.Thread(target=self._run, name="adapterctl-follower", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            connection = self._listen()
        except Exception:
            log.exception("cannot LISTEN for activations; following by polling only")
            connection = None
        while not self.stop.is_set():
            try:
                for swap in self.runtime.refresh():
                    if swap.error:
                        log.error("%s", swap.error)
                    else:
                        log.info("%s: now serving %s (was %s; verify %.0f ms, load %.0f ms, switch %.1f ms)", swap.line, swap.new,
                                 swap.old, swap.verify_s * 1000, swap.load_s * 1000, swap.switch_s * 1000)
            except Exception:
                log.exception("refreshing the served adapters failed; will retry")
            if connection is not None:
                for _ in connection.notifies(timeout=self.poll_s, stop_after=1):
                    pass
            else:
                self.stop.wait(self.poll_s)

    def _listen(self):
        if self.ws.db.backend != "postgresql":
            return None
        import psycopg

        from adapterctl.activations import CHANNEL

        url = self.ws.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        connection = psycopg.connect(url, autocommit=True)
        connection.execute(f"LISTEN {CHANNEL}")
        self.listening = True
        return connection

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def create_app(ws: Workspace, runtime: Runtime, *, auth: bool = True, poll_s: float = 0.5, max_body_bytes: int = MAX_BODY_BYTES):
    """The ASGI application: FastAPI behind a guard; its lifespan runs the follower and the feedback writer."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

    metrics = Metrics()
    responses: OrderedDict[str, dict[str, Any]] = OrderedDict()
    responses_lock = threading.Lock()
    token_cache: dict[str, tuple[float, str | None]] = {}
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app):
        state["writer"], state["follower"] = FeedbackWriter(ws), Follower(ws, runtime, poll_s)
        yield
        state["follower"].close()
        state["writer"].close()

    app = FastAPI(title="adapterctl", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)

    def cached_scope(secret: str) -> tuple[bool, str | None]:
        cached = token_cache.get(secret)
        return (True, cached[1]) if cached and time.monotonic() - cached[0] < TOKEN_CACHE_S else (False, None)

    def looked_up_scope(secret: str) -> str | None:
        with ws.reading() as session:
            scope = tokens.scope_of(session, secret)
        token_cache[secret] = (time.monotonic(), scope)
        return scope

    NEEDS = {"/v1/chat/completions": "generate", "/v1/models": "generate", "/v1/feedback": "feedback", "/metrics": "admin"}

    async def guard(scope, receive, send):
        """Plain ASGI around the app: size limit, bearer token and scope, metrics (no per-request task)."""
        if scope["type"] != "http":
            return await app(scope, receive, send)
        started, path, status = time.perf_counter(), scope["path"], [500]

        async def send_noting_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        refusal = await _refusal(path, dict(scope["headers"]))
        await (refusal or app)(scope, receive, send_noting_status)
        metrics.observe(path, status[0], time.perf_counter() - started)

    async def _refusal(path: str, headers: dict[bytes, bytes]):
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            return error(413, f"request body larger than {max_body_bytes} bytes")
        needed = NEEDS.get(path)
        if not (auth and needed):
            return None
        from starlette.concurrency import run_in_threadpool

        header = headers.get(b"authorization", b"").decode("latin-1")
        secret = header[7:].strip() if header.lower().startswith("bearer ") else ""
        known, token_scope = cached_scope(secret)
        if secret and not known:  # tokens are looked up once per TOKEN_CACHE_S, off the event loop
            token_scope = await run_in_threadpool(looked_up_scope, secret)
        if token_scope is None:
            return error(401, "missing or invalid bearer token", "authentication_error")
        if not tokens.allows(token_scope, needed):
            return error(403, f"this token's scope is {token_scope}; {path} needs {needed}", "permission_error")
        return None

    async def body_of(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > max_body_bytes:
            raise InvalidInput(f"request body larger than {max_body_bytes} bytes")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidInput("body must be a JSON object")
        return body

    @app.exception_handler(AdapterctlError)
    async def known_error(request: Request, exc: AdapterctlError):
        status = 404 if isinstance(exc, NotFound) else 400 if exc.exit_code == 2 else 500
        return error(status, str(exc))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        from starlette.concurrency import run_in_threadpool

        body = await body_of(request)
        model, messages, options = _completion_request(body)
        response_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def remember(served_by: str, text: str) -> None:
            with responses_lock:
                responses[response_id] = {"line": model.split("@")[0], "served_by": served_by, "prompt": messages, "response": text}
                while len(responses) > REMEMBERED_RESPONSES:
                    responses.popitem(last=False)

        if body.get("stream"):
            served_by, pieces = await run_in_threadpool(lambda: runtime.stream(model, messages, **options))

            def events():
                def chunk(delta: dict, finish: str | None = None) -> str:
                    return "data: " + json.dumps({"id": response_id, "object": "chat.completion.chunk", "created": created, "model": served_by,
                                                  "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"

                yield chunk({"role": "assistant", "content": ""})
                text = []
                for piece in pieces:
                    if piece:
                        text.append(piece)
                        yield chunk({"content": piece})
                remember(served_by, "".join(text).strip())
                yield chunk({}, "stop") + "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream", headers={"X-Adapter-Version": served_by})
        answer = await run_in_threadpool(lambda: runtime.generate(model, messages, **options))
        remember(answer.served_by, answer.text)
        headers = {"X-Adapter-Version": answer.served_by}
        return JSONResponse({
            "id": response_id, "object": "chat.completion", "created": created, "model": answer.served_by,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                      "total_tokens": answer.prompt_tokens + answer.completion_tokens},
        }, headers=headers)

    @app.get("/v1/models")
    async def models():
        names = sorted(runtime.served()) + runtime.pinned()
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "adapterctl",
                                            "served_by": runtime.served().get(name, name)} for name in names]}

    @app.post("/v1/feedback")
    async def post_feedback(request: Request):
        from starlette.concurrency import run_in_threadpool

        body = await body_of(request)
        response_id = body.get("response_id")
        if not isinstance(response_id, str):
            raise InvalidInput("field 'response_id' is required: the id of a chat completion this server returned")
        with responses_lock:
            issued = responses.get(response_id)
        if issued is None:
            raise NotFound(f"response {response_id!r} was not issued by this server (or is too old to be remembered)")
        allowed = {"rating", "correction", "chosen", "rejected", "source", "tags"}
        if unknown := sorted(set(body) - allowed - {"response_id"}):
            raise InvalidInput(f"unknown field {unknown[0]!r}; feedback takes response_id, {', '.join(sorted(allowed))}")
        record = feedback.parse_record({**{k: body[k] for k in allowed if k in body}, "prompt": issued["prompt"],
                                        "response": issued["response"], "adapter_version": issued["served_by"], "request_id": response_id},
                                       max_field_bytes=ws.settings.max_field_bytes, issued=True)
        feedback_id = await run_in_threadpool(state["writer"].submit, issued["line"], record)
        return {"id": feedback_id, "response_id": response_id, "adapter_version": issued["served_by"]}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "serving": runtime.served(), "listening": state["follower"].listening if "follower" in state else False}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(runtime), media_type="text/plain; version=0.0.4")

    return guard


def _completion_request(body: dict[str, Any]) -> tuple[str, list[dict[str, str]], dict[str, Any]]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("field 'model' is required: a line name, or line@vN for a pinned version")
    messages = feedback.parse_prompt(body.get("messages"), feedback.DEFAULT_MAX_FIELD_BYTES)
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 64))
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= 4096:
        raise InvalidInput("field 'max_tokens' must be an integer from 1 to 4096")
    temperature = body.get("temperature", 0.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise InvalidInput("field 'temperature' must be a number from 0 to 2")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidInput("field 'seed' must be an integer")
    return model, messages, {"max_tokens": max_tokens, "temperature": float(temperature), "seed": seed}
