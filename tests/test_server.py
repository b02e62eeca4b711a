"""`adapterctl serve` as a real process on loopback, spoken to over real HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text, update

from adapterctl import registry
from adapterctl.db.models import Feedback, IssuedResponse
from adapterctl.db.types import utcnow
from adapterctl.lines import get_line
from tests.conftest import Cli
from tests.test_runtime import approved_version

pytestmark = pytest.mark.slow
CHAT = [{"role": "user", "content": "What is the code for room 3?"}]


class Server:
    def __init__(self, cli, *args: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.log = tempfile.TemporaryFile("w+")  # not a pipe: a server logging much would block once a pipe is full
        self.process = subprocess.Popen(
            [sys.executable, "-m", "adapterctl", "serve", "--port", str(self.port), "--poll", "0.2", *args],
            env=cli.env,
            stdout=self.log,
            stderr=self.log,
            text=True,
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                if self.call("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)

    def call(self, method: str, path: str, body=None, token: str | None = None, raw: bytes | None = None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read().decode()
                return (
                    response.status,
                    (json.loads(text) if "json" in response.headers.get("content-type", "") else text),
                    dict(response.headers),
                )
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read().decode() or "null"), dict(exc.headers)

    def oversized(self, path: str, token: str) -> int:
        """Announce a 2 MiB body and send none: the server must refuse it from the headers alone."""
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.putrequest("POST", path)
        for name, value in (("Content-Type", "application/json"), ("Content-Length", str(2 << 20)), ("Authorization", f"Bearer {token}")):
            connection.putheader(name, value)
        connection.endheaders()
        status = connection.getresponse().status
        connection.close()
        return status

    def chat(self, token, model="facts", **extra):
        return self.call("POST", "/v1/chat/completions", {"model": model, "messages": CHAT, "max_tokens": 12, **extra}, token)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture
def serving(ws, tiny_line, tiny_model, cli):
    """Two approved versions of line `facts`, tokens of each scope, and a function that starts the server."""
    approved_version(ws, tiny_line, tiny_model, seed=1)
    approved_version(ws, tiny_line, tiny_model, seed=2)
    scoped = {scope: cli("token", "create", "--scope", scope).stdout.strip() for scope in ("generate", "feedback", "admin")}
    servers = []

    def start(*args: str) -> Server:
        servers.append(Server(cli, *args))
        return servers[-1]

    yield start, scoped
    for server in servers:
        server.stop()


def feedback_count(ws) -> int:
    with ws.transaction() as session:
        return session.scalar(select(func.count()).select_from(Feedback))


def issued_ids(ws) -> list[str]:
    with ws.reading() as session:
        return sorted(session.scalars(select(IssuedResponse.id)))


def test_tokens_scopes_and_bad_requests(serving, ws):
    start, token = serving
    server = start()
    assert server.call("GET", "/healthz")[0] == 200  # no token needed
    assert server.chat(None)[0] == 401
    assert server.chat("actl_not-a-token")[0] == 401
    status, body, _ = server.chat(token["feedback"])
    assert status == 403 and "needs generate" in body["error"]["message"]
    assert server.call("GET", "/metrics", token=token["generate"])[0] == 403
    status, body, headers = server.chat(token["generate"])
    assert status == 200 and body["model"] == headers["x-adapter-version"] == "facts@base"
    assert body["choices"][0]["message"]["role"] == "assistant" and body["usage"]["completion_tokens"] > 0
    for bad, message in (
        ({"model": "facts", "messages": []}, "'messages' must be"),
        ({"model": "facts", "messages": CHAT, "max_tokens": 0}, "max_tokens"),
        ({"messages": CHAT}, "'model' is required"),
        ({"model": "nope", "messages": CHAT}, "not served here"),
    ):
        status, body, _ = server.call("POST", "/v1/chat/completions", bad, token["generate"])
        assert 400 <= status < 500 and message in body["error"]["message"], (bad, body)
    assert server.call("POST", "/v1/chat/completions", raw=b"{not json", token=token["admin"])[0] == 400
    assert server.oversized("/v1/chat/completions", token["admin"]) == 413
    models = server.call("GET", "/v1/models", token=token["generate"])[1]
    assert [m["id"] for m in models["data"]] == ["facts"]
    metrics = server.call("GET", "/metrics", token=token["admin"])[1]
    assert 'adapterctl_active_version{line="facts",version="base"} 1.0' in metrics and "adapterctl_requests_total" in metrics


def test_feedback_on_issued_responses_names_the_version(serving, ws):
    start, token = serving
    server = start()
    response_id = server.chat(token["generate"])[1]["id"]
    before = feedback_count(ws)
    for bad in (
        {"response_id": "chatcmpl-unknown", "rating": 1},
        {"rating": 1},
        {"response_id": response_id, "rating": 7},
        {"response_id": response_id, "rating": 1, "weight": 2},
    ):
        status, body, _ = server.call("POST", "/v1/feedback", bad, token["feedback"])
        assert 400 <= status < 500, (bad, body)
    assert feedback_count(ws) == before  # nothing stored from a bad request
    assert server.call("POST", "/v1/feedback", {"response_id": response_id, "rating": 1}, token["generate"])[0] == 403
    status, body, _ = server.call(
        "POST",
        "/v1/feedback",
        {"response_id": response_id, "rating": -1, "correction": "The code is 1111.", "source": "user-9"},
        token["feedback"],
    )
    assert status == 200 and body["adapter_version"] == "facts@base"
    with ws.transaction() as session:
        row = session.get(Feedback, body["id"])
        assert (row.adapter_version, row.request_id, row.correction, row.prompt) == ("facts@base", response_id, "The code is 1111.", CHAT)
    for choice in (1, -1, "0", True):  # one choice was issued: index 0
        status, body, _ = server.call(
            "POST", "/v1/feedback", {"response_id": response_id, "rating": 1, "choice": choice}, token["feedback"]
        )
        assert status == 400 and body["error"]["param"] == "choice", (choice, body)
    assert server.call("POST", "/v1/feedback", {"response_id": response_id, "rating": 1, "choice": 0}, token["feedback"])[0] == 200
    answer = server.chat(token["generate"], n=2, temperature=1.0, seed=7, user="u-42")[1]
    status, body, _ = server.call("POST", "/v1/feedback", {"response_id": answer["id"], "rating": 1, "choice": 1}, token["feedback"])
    assert status == 200
    with ws.reading() as session:
        assert session.get(Feedback, body["id"]).response == answer["choices"][1]["message"]["content"]
        assert session.get(IssuedResponse, answer["id"]).user == "u-42"
    status, body, _ = server.call("POST", "/v1/feedback", {"response_id": answer["id"], "rating": 1, "choice": 2}, token["feedback"])
    assert status == 400 and body["error"]["param"] == "choice" and "has 2 choice(s)" in body["error"]["message"]


def test_a_response_with_store_false_is_not_kept_so_feedback_cannot_name_it(serving, ws):
    start, token = serving
    server = start()
    status, body, _ = server.chat(token["generate"], store="no")
    assert status == 400 and body["error"]["param"] == "store"
    before = issued_ids(ws)
    unstored = [
        server.chat(token["generate"], store=False)[1]["id"],
        json.loads(server.chat(token["generate"], store=False, stream=True)[1].split("\n\n")[0][6:])["id"],
    ]
    assert issued_ids(ws) == before
    for response_id in unstored:
        status, body, _ = server.call("POST", "/v1/feedback", {"response_id": response_id, "rating": 1}, token["feedback"])
        assert status == 404 and "store: false" in body["error"]["message"] and body["error"]["param"] == "response_id"


def test_promote_and_rollback_reach_a_looping_client_within_2_s_without_failures(serving, ws, cli):
    start, token = serving
    server = start("--pin", "facts@v1")
    seen, failures, stop = [], [], threading.Event()

    def client():
        while not stop.is_set():
            status, body, _ = server.chat(token["generate"])
            (seen.append((time.monotonic(), body["model"])) if status == 200 else failures.append((status, body)))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        for command, expected in ((["promote", "facts", "v2"], "facts@v2"), (["rollback", "facts"], "facts@base")):
            assert cli(*command).returncode == 0
            changed = time.monotonic()
            deadline = changed + 2.0
            while not any(at > changed and model == expected for at, model in seen):
                assert time.monotonic() < deadline + 3, f"{expected} not served within 2 s (last: {seen[-1:]})"
                time.sleep(0.05)
            first = min(at for at, model in seen if at > changed and model == expected)
            assert first - changed <= 2.0, f"{expected} took {first - changed:.2f} s"
    finally:
        stop.set()
        thread.join(timeout=60)
    assert failures == []
    pinned = server.chat(token["generate"], model="facts@v1")
    assert pinned[0] == 200 and pinned[1]["model"] == "facts@v1"


def test_forgetting_the_served_versions_data_moves_the_server(serving, ws, cli, tiny_model, tiny_line):
    start, token = serving
    tainted = ws.log_feedback(line=tiny_line, prompt="q", response="a", rating=1)
    approved_version(ws, tiny_line, tiny_model, seed=3, trained_on=[tainted])
    assert cli("promote", tiny_line, "v3").returncode == 0
    server = start()
    assert server.chat(token["generate"])[1]["model"] == "facts@v3"
    assert cli("feedback", "forget", "--id", str(tainted)).returncode == 0
    deadline = time.monotonic() + 5
    while server.chat(token["generate"])[1]["model"] != "facts@v2":
        assert time.monotonic() < deadline, "the server did not fall back"
        time.sleep(0.1)


def test_streaming_sends_the_answer_as_it_is_generated(serving, ws, cli):
    start, token = serving
    assert cli("promote", "facts", "v1").returncode == 0
    server = start()
    whole = server.chat(token["generate"], max_tokens=16)[1]
    status, events, headers = server.call(
        "POST", "/v1/chat/completions", {"model": "facts", "messages": CHAT, "max_tokens": 16, "stream": True}, token["generate"]
    )
    assert status == 200 and headers["x-adapter-version"] == "facts@v1" and events.endswith("data: [DONE]\n\n")
    chunks = [json.loads(line[6:]) for line in events.split("\n\n") if line.startswith("data: {")]
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks]
    assert {c["model"] for c in chunks} == {"facts@v1"}
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"] == "length"  # cut at max_tokens
    assert sum(bool(piece) for piece in pieces) > 1  # more than one piece of text: it streamed
    assert "".join(pieces) == whole["choices"][0]["message"]["content"]  # no leading space the whole answer strips
    status, body, _ = server.call("POST", "/v1/feedback", {"response_id": chunks[0]["id"], "rating": 1}, token["feedback"])
    assert status == 200 and body["adapter_version"] == "facts@v1"  # a streamed answer takes feedback too


# --- hostile input and limits (probed: each of these was a hole) ----------------------------------


def send_chunked(server, path: str, token: str, chunks: int, chunk_bytes: int = 64 << 10) -> int:
    """Send `chunks` pieces of a chunked body and then read the answer, without ever ending the body:
    a server that waits for the whole body never answers."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.putrequest("POST", path)
    for name, value in (("Content-Type", "application/json"), ("Transfer-Encoding", "chunked"), ("Authorization", f"Bearer {token}")):
        connection.putheader(name, value)
    connection.endheaders()
    piece = b'{"x": "' + b"a" * chunk_bytes
    try:
        for _ in range(chunks):
            connection.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    except OSError:  # the server answered and closed while we were still sending
        pass
    status = connection.getresponse().status
    connection.close()
    return status


def test_a_chunked_body_over_the_limit_is_refused_as_soon_as_it_passes_it(serving):
    start, token = serving
    server = start()
    assert send_chunked(server, "/v1/chat/completions", token["generate"], chunks=20) == 413  # 1.25 MiB, body never ended
    assert send_chunked(server, "/v1/feedback", token["feedback"], chunks=20) == 413
    assert server.chat(token["generate"])[0] == 200  # and the server is fine


def metric_lines(server, token) -> list[str]:
    return server.call("GET", "/metrics", token=token["admin"])[1].splitlines()


def test_metrics_keep_unknown_paths_out_of_their_labels_and_count_every_response(serving, ws, tiny_model, tiny_line, cli):
    start, token = serving
    approved_version(ws, tiny_line, tiny_model, seed=3, broken=True)  # NaN weights: sampling fails, a real 500
    server = start("--pin", "facts@v3")
    injected = "/x%22,code=%22200%22%7D%201%0Aadapterctl_active_version%7Bline=%22svc%22,version=%22v666%22%7D%201%0A"
    assert server.call("GET", injected)[0] == 404
    for i in range(50):
        server.call("GET", f"/scan-{i}")
    assert server.chat(token["generate"], model="facts@v3", temperature=1.0)[0] == 500
    lines = metric_lines(server, token)
    assert not any("v666" in line or "scan-" in line for line in lines)
    assert 'adapterctl_requests_total{code="404",path="other"} 51.0' in lines
    assert 'adapterctl_requests_total{code="500",path="/v1/chat/completions"} 1.0' in lines
    samples = [line for line in lines if not line.startswith("#")]
    assert all(line.startswith("adapterctl_") and line.count(" ") == 1 for line in samples)
    families = {line.split()[2] for line in lines if line.startswith("# TYPE")}
    assert (
        families
        == {line.split()[2] for line in lines if line.startswith("# HELP")}
        >= {"adapterctl_requests_total", "adapterctl_active_version"}
    )


BAD_CHATS = [
    ({"seed": 2**64}, "seed"),
    ({"seed": -(2**63) - 1}, "seed"),
    ({"temperature": 1e-300}, "temperature"),
    ({"messages": [*CHAT, {"role": "assistant", "content": "a"}, {"role": "tool", "content": "{}"}]}, "messages[2].role"),
    ({"messages": [{"role": "user", "content": "x y z " * 5000}]}, "messages"),
    ({"max_tokens": 5000}, "max_tokens"),
]


@pytest.mark.parametrize("stream", [False, True])
def test_hostile_requests_are_400s_naming_the_field_never_500s_or_empty_streams(serving, ws, stream):
    start, token = serving
    server = start()
    response_id = server.chat(token["generate"])[1]["id"]
    for change, param in BAD_CHATS:
        status, body, _ = server.call(
            "POST",
            "/v1/chat/completions",
            {"model": "facts", "messages": CHAT, "max_tokens": 8, "stream": stream, **change},
            token["generate"],
        )
        assert status == 400 and body["error"]["param"] == param, (change, status, body)
    status, body, _ = server.call(
        "POST",
        "/v1/chat/completions",
        {"model": "facts", "messages": [{"role": "user", "content": "x y z " * 5000}], "stream": stream},
        token["generate"],
    )
    assert body["error"]["code"] == "context_length_exceeded" and "maximum context length is 1024 tokens" in body["error"]["message"]
    assert server.call("POST", "/v1/chat/completions", raw=b"[" * 100_000 + b"]" * 100_000, token=token["generate"])[0] == 400
    before = feedback_count(ws)
    for raw, message in (
        (b'{"response_id": "%s", "rating": 1%s}' % (response_id.encode(), b"0" * 400), "rating"),
        (b'{"response_id": "%s", "rating": 1, "rating": -1}' % response_id.encode(), "appears twice"),
    ):
        status, body, _ = server.call("POST", "/v1/feedback", raw=raw, token=token["feedback"])
        assert status == 400 and message in body["error"]["message"], body
    assert feedback_count(ws) == before
    assert not [line for line in metric_lines(server, token) if line.startswith("adapterctl_requests_total") and 'code="5' in line]


def test_a_stream_that_fails_midway_ends_with_an_error_event(serving, ws, tiny_model, tiny_line):
    start, token = serving
    approved_version(ws, tiny_line, tiny_model, seed=3, broken=True)
    server = start("--pin", "facts@v3")
    status, events, _ = server.call(
        "POST",
        "/v1/chat/completions",
        {"model": "facts@v3", "messages": CHAT, "max_tokens": 8, "stream": True, "temperature": 1.0},
        token["generate"],
    )
    assert status == 200  # headers were sent before the failure
    last = json.loads(events.strip().split("\n\n")[-1][6:])
    assert "[DONE]" not in events and "generation failed" in last["error"]["message"]


def test_forgotten_feedback_cannot_be_stored_again_through_its_response(serving, ws, cli):
    start, token = serving
    server = start()
    response_id = server.chat(token["generate"])[1]["id"]
    marker = "forget-me-7f3c"
    status, body, _ = server.call(
        "POST", "/v1/feedback", {"response_id": response_id, "rating": -1, "correction": marker, "source": "victim-7f3c"}, token["feedback"]
    )
    assert status == 200
    forget = cli("feedback", "forget", "--source", "victim-7f3c")
    assert forget.returncode == 0 and "issued responses: 1" in forget.stdout, forget.stdout
    assert issued_ids(ws) == []
    status, body, _ = server.call("POST", "/v1/feedback", {"response_id": response_id, "rating": 1}, token["feedback"])  # at once: no poll
    assert status == 404 and body["error"]["param"] == "response_id"
    with ws.reading() as session:
        stored = session.scalars(select(Feedback).where(Feedback.request_id == response_id, Feedback.status == "active")).all()
    assert stored == []


def lock_feedback_table(ws, held: threading.Event, release: threading.Event) -> None:
    """Hold the database's write lock (SQLite) or the feedback table's lock (PostgreSQL) until released."""
    with ws.transaction() as session:
        if ws.db.backend == "postgresql":
            session.execute(text("LOCK TABLE feedback IN ACCESS EXCLUSIVE MODE"))
        else:
            session.execute(text("DELETE FROM feedback WHERE id < 0"))  # a write: the lock is taken (BEGIN IMMEDIATE)
        held.set()
        release.wait(60)


def test_a_locked_database_answers_503_keeps_the_feedback_and_a_retry_gets_the_same_record(serving, ws, settings):
    start, token = serving
    server = start()
    response_id = server.chat(token["generate"])[1]["id"]
    fresh = Cli(settings)("token", "create", "--scope", "generate").stdout.strip()
    held, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=lock_feedback_table, args=(ws, held, release))
    holder.start()
    try:
        assert held.wait(30)
        status, body, headers = server.call("POST", "/v1/feedback", {"response_id": response_id, "rating": 1}, token["feedback"])
        assert status == 503 and headers["retry-after"] and body["error"]["code"] == "database_busy", body
        status, locked_chat, _ = server.chat(fresh)  # a token never seen before is looked up while the lock is held
        assert status == 200  # on SQLite its response is not recorded yet: the chat answers anyway, after RESPONSE_WAIT_S
    finally:
        release.set()
        holder.join()
    status, body, _ = server.call("POST", "/v1/feedback", {"response_id": locked_chat["id"], "rating": -1}, token["feedback"])
    assert status == 200, body
    status, body, _ = server.call("POST", "/v1/feedback", {"response_id": response_id, "rating": 1}, token["feedback"])
    assert status == 200
    with ws.reading() as session:
        rows = session.scalars(select(Feedback).where(Feedback.request_id == response_id)).all()
    assert [(row.id, row.times_seen) for row in rows] == [(body["id"], 1)]  # stored once, though sent twice


def test_any_approved_version_is_served_on_demand_and_the_least_recently_used_is_unloaded(serving, ws, tiny_model, tiny_line):
    start, token = serving
    approved_version(ws, tiny_line, tiny_model, seed=3)
    server = start("--max-versions", "1", "--pin", "facts@v1")

    def loaded() -> set[str]:
        return {m["id"] for m in server.call("GET", "/v1/models", token=token["generate"])[1]["data"]} - {"facts"}

    first = {}
    for model in ("facts@v2", "facts@v3"):
        status, body, headers = server.chat(token["generate"], model=model)
        assert status == 200 and body["model"] == headers["x-adapter-version"] == model
        first[model] = body["choices"][0]["message"]["content"]
    assert loaded() == {"facts@v1", "facts@v3"}  # v2 was unloaded; the pinned v1 stays
    assert server.chat(token["generate"], model="facts@v2")[1]["choices"][0]["message"]["content"] == first["facts@v2"]
    assert loaded() == {"facts@v1", "facts@v2"}
    with ws.transaction() as session:
        registry.transition(session, registry.get_version(session, get_line(session, tiny_line).id, 2).id, "revoked", actor="ops")
    deadline = time.monotonic() + 10
    while "facts@v2" in loaded():
        assert time.monotonic() < deadline, "the revoked version stayed loaded"
        time.sleep(0.2)
    status, body, _ = server.chat(token["generate"], model="facts@v2")
    assert status == 404 and body["error"]["code"] == "model_not_found" and "revoked" in body["error"]["message"]
    assert server.chat(token["generate"], model="facts@v9")[1]["error"]["param"] == "model"


# --- several servers on one database ------------------------------------------------------------


def wait_for_model(server, token, expected: str, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while (served := server.chat(token["generate"])[1]["model"]) != expected:
        assert time.monotonic() < deadline, f"server on port {server.port} still serves {served}, not {expected}"
        time.sleep(0.1)


def test_two_servers_on_one_database_take_each_others_feedback_and_follow_promote_and_rollback(serving, ws, cli):
    """Two `adapterctl serve` behind a load balancer: a response from one takes feedback on the other."""
    start, token = serving
    assert cli("promote", "facts", "v1").returncode == 0
    a, b = start(), start()
    for asked, told, rating in ((a, b, 1), (b, a, -1)):  # ratings differ: the same rating on the same answer is one record
        status, answer, _ = asked.chat(token["generate"])
        assert status == 200 and answer["model"] == "facts@v1"
        status, body, _ = told.call("POST", "/v1/feedback", {"response_id": answer["id"], "rating": rating}, token["feedback"])
        assert status == 200 and body["adapter_version"] == "facts@v1", body
        with ws.reading() as session:
            row = session.get(Feedback, body["id"])
            assert (row.request_id, row.prompt, row.response) == (answer["id"], CHAT, answer["choices"][0]["message"]["content"])
    for command, expected in ((["promote", "facts", "v2"], "facts@v2"), (["rollback", "facts"], "facts@v1")):
        assert cli(*command).returncode == 0
        for server in (a, b):
            wait_for_model(server, token, expected)
        answer = a.chat(token["generate"])[1]
        status, body, _ = b.call("POST", "/v1/feedback", {"response_id": answer["id"], "rating": -1}, token["feedback"])
        assert status == 200 and body["adapter_version"] == expected


def test_feedback_works_after_a_restart_and_not_past_the_retention(serving, ws):
    start, token = serving
    server = start()
    kept, aged = (server.chat(token["generate"])[1]["id"] for _ in range(2))
    server.stop()
    with ws.transaction() as session:  # issued 8 days ago: past the default retention of 7
        session.execute(update(IssuedResponse).where(IssuedResponse.id == aged).values(created_at=utcnow() - timedelta(days=8)))
    server = start()
    status, body, _ = server.call("POST", "/v1/feedback", {"response_id": kept, "rating": 1}, token["feedback"])
    assert status == 200 and body["adapter_version"] == "facts@base"
    status, body, _ = server.call("POST", "/v1/feedback", {"response_id": aged, "rating": 1}, token["feedback"])
    assert status == 404 and "older than the retention (7 days)" in body["error"]["message"]
    deadline = time.monotonic() + 10  # a server prunes when it starts, then once a minute
    while "adapterctl_pruned_responses_total 1.0" not in metric_lines(server, token):
        assert time.monotonic() < deadline, "the server did not prune the response past the retention"
        time.sleep(0.1)
    assert issued_ids(ws) == [kept]


def test_feedback_is_taken_on_an_answer_with_a_nul_character(serving, ws, tiny_model):
    """A byte-level tokenizer has a token for NUL, which PostgreSQL text cannot hold: feedback on an answer
    that said it was refused with 400 (bench/soak.py found it). It is stored with U+FFFD for the NUL."""
    from transformers import AutoTokenizer

    start, token = serving
    server = start()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    nul = next(i for i in range(len(tokenizer)) if tokenizer.decode([i]) == "\x00")
    status, answer, _ = server.chat(token["generate"], max_tokens=3, logit_bias={str(nul): 100})
    assert status == 200 and answer["choices"][0]["message"]["content"] == "\x00" * 3
    status, body, _ = server.call(
        "POST", "/v1/feedback", {"response_id": answer["id"], "rating": -1, "correction": "Room 3: 1111."}, token["feedback"]
    )
    assert status == 200, body
    with ws.reading() as session:
        assert session.get(Feedback, body["id"]).response == "\ufffd" * 3
