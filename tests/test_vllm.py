"""adapterctl driving real vLLM servers (the CPU build): `vllm sync` follows the database, and
`serve --engine vllm` answers through them with the embedded engine's contract.

Two vLLM servers run for the whole module (from ADAPTERCTL_TEST_VLLM_PYTHON; `make test-vllm`), each
cleared before a test, as if freshly started.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from types import SimpleNamespace

import pytest

from adapterctl import activations, feedback
from adapterctl.db.models import Feedback
from adapterctl.lines import get_line
from adapterctl.serving.completion import Sampling
from tests.conftest import postgresql_only, sqlite_only
from tests.test_runtime import approved_version, fresh_answer
from tests.test_server import CHAT, Server
from tests.vllm_servers import REQUIRE_VLLM, VLLM_PYTHON, free_port, start_servers

needs_vllm = [pytest.mark.slow, pytest.mark.vllm]


@pytest.fixture(scope="module")
def vllm_servers(tmp_path_factory, tiny_model):
    if not VLLM_PYTHON:
        message = "no vLLM: set ADAPTERCTL_TEST_VLLM_PYTHON (`make test-vllm` does)"
        pytest.fail(message) if REQUIRE_VLLM else pytest.skip(message)
    servers = start_servers(VLLM_PYTHON, tiny_model, tmp_path_factory.mktemp("vllm-logs"), 2)
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def fleet(vllm_servers, ws, tiny_line, tiny_model, cli, tmp_path):
    """Versions v1 and v2 of line `facts`, tokens, and functions that start `vllm sync` and the gateway."""
    for server in vllm_servers:
        server.clear()
    approved_version(ws, tiny_line, tiny_model, seed=1)
    approved_version(ws, tiny_line, tiny_model, seed=2)
    token = {scope: cli("token", "create", "--scope", scope).stdout.strip() for scope in ("generate", "feedback", "admin")}
    urls = [arg for server in vllm_servers for arg in ("--url", server.url)]
    started = []

    def sync(*args: str) -> subprocess.Popen:
        log = open(tmp_path / f"sync-{len(started)}.log", "w")
        started.append(
            subprocess.Popen(
                [sys.executable, "-m", "adapterctl", "vllm", "sync", *urls, "--poll", "0.2", "--json", *args],
                env=cli.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        return started[-1]

    def gateway(*upstreams: str) -> Server:
        upstreams = upstreams or tuple(server.url for server in vllm_servers)
        started.append(Server(cli, "--engine", "vllm", *(arg for url in upstreams for arg in ("--upstream", url))))
        return started[-1]

    yield SimpleNamespace(servers=vllm_servers, token=token, sync=sync, gateway=gateway, tmp=tmp_path)
    for process in started:
        (process.stop if isinstance(process, Server) else process.terminate)()


def eventually(check, within_s: float = 15.0, message: str = "") -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, message or f"not within {within_s} s"
        time.sleep(0.1)


def every_server_holds(fleet, *names: str) -> bool:
    return all(server.adapters() == sorted(names) for server in fleet.servers)


class LoopingClient:
    """Chats through the gateway without pause, keeping every answer (status, model, text)."""

    def __init__(self, server: Server, token: str) -> None:
        self.server, self.token = server, token
        self.answers: list[tuple[int, str | None, str | None]] = []
        self.answered_at: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            status, body, _ = self.server.chat(self.token, max_tokens=8)
            self.answers.append(
                (status, body.get("model"), body["choices"][0]["message"]["content"] if status == 200 else json.dumps(body))
            )
            self.answered_at.append(time.time())

    def first_answer_of(self, model: str, after: float) -> float:
        return next(at for at, (_, named, _) in zip(self.answered_at, self.answers) if at > after and named == model)

    def last_model(self) -> str | None:
        return self.answers[-1][1] if self.answers else None

    def finish(self) -> list[tuple[int, str | None, str | None]]:
        self.stop.set()
        self.thread.join(timeout=60)
        return self.answers


@pytest.mark.slow
@pytest.mark.vllm
def test_promote_and_rollback_reach_answers_served_by_vllm_without_a_failed_request(fleet, cli, ws, tiny_model):
    assert cli("promote", "facts", "v1").returncode == 0
    fleet.sync("--grace", "2s")
    eventually(lambda: every_server_holds(fleet, "facts@v1"), 30, "vllm sync did not load facts@v1 on both servers")
    gateway = fleet.gateway()
    client = LoopingClient(gateway, fleet.token["generate"])
    eventually(lambda: client.last_model() == "facts@v1", 15)
    moments = {}
    for command, expected in ((["promote", "facts", "v2"], "facts@v2"), (["rollback", "facts"], "facts@v1")):
        assert cli(*command).returncode == 0
        eventually(lambda: client.last_model() == expected, 15, f"answers did not move to {expected}")  # noqa: B023 (called at once)
        with ws.reading() as session:
            committed = activations.current(session, get_line(session, "facts").id).created_at.timestamp()
        moments[expected] = client.first_answer_of(expected, after=committed) - committed
        eventually(lambda: every_server_holds(fleet, expected), 15, "the replaced version was not unloaded after the grace period")  # noqa: B023 (called at once)
    answers = client.finish()
    failed = [a for a in answers if a[0] != 200]
    assert not failed and len(answers) > 10, (failed[:3], len(answers))
    texts = {model: {text for _, m, text in answers if m == model} for model in ("facts@v1", "facts@v2")}
    assert texts == {"facts@v1": {fresh_answer(ws, tiny_model, "facts", 1, 8)}, "facts@v2": {fresh_answer(ws, tiny_model, "facts", 2, 8)}}
    print(
        f"\n{len(answers)} answers through vLLM, 0 failed; from the commit to the first answer of the new version: "
        f"promote {moments['facts@v2']:.2f} s, rollback {moments['facts@v1']:.2f} s"
    )

    status, answer, headers = gateway.chat(fleet.token["generate"])
    assert headers["x-adapter-version"] == "facts@v1"
    status, body, _ = gateway.call("POST", "/v1/feedback", {"response_id": answer["id"], "rating": -1}, fleet.token["feedback"])
    assert status == 200 and body["adapter_version"] == "facts@v1"
    with ws.reading() as session:
        assert session.get(Feedback, body["id"]).response == answer["choices"][0]["message"]["content"]

    report = cli.json("vllm", "status", "--url", fleet.servers[0].url, "--url", fleet.servers[1].url)
    assert report["lines"] == {"facts": "facts@v1"}
    assert [(s["up"], s["holds"], s["in_step"]) for s in report["servers"]] == [(True, ["facts@v1"], {"facts": True})] * 2
    metrics = gateway.call("GET", "/metrics", token=fleet.token["admin"])[1]
    for url in (s.url for s in fleet.servers):
        assert f'adapterctl_upstream_holds{{model="facts@v1",upstream="{url}"}} 1.0' in metrics


@pytest.mark.slow
@pytest.mark.vllm
@postgresql_only
def test_a_canary_is_loaded_beside_the_active_version_and_its_users_are_routed_to_it(fleet, cli):
    assert cli("promote", "facts", "v1").returncode == 0
    fleet.sync("--grace", "1s")
    eventually(lambda: every_server_holds(fleet, "facts@v1"), 30, "vllm sync did not load facts@v1")
    gateway = fleet.gateway()
    assert cli("promote", "facts", "v2", "--canary", "50%").returncode == 0
    eventually(lambda: every_server_holds(fleet, "facts@v1", "facts@v2"), 30, "vllm sync did not load the canary beside v1")
    report = cli.json("vllm", "status", "--url", fleet.servers[0].url, "--url", fleet.servers[1].url)
    assert report["canaries"] == {"facts": "facts@v2"} and all(s["in_step"] == {"facts": True} for s in report["servers"])

    def sides() -> dict[str, str]:
        return {user: gateway.chat(fleet.token["generate"], user=user)[1]["model"] for user in (f"user-{i}" for i in range(16))}

    eventually(lambda: set(sides().values()) == {"facts@v1", "facts@v2"}, 15, "the gateway did not route users to the canary")
    assert sides() == sides()  # sticky
    assert cli("canary", "abort", "facts").returncode == 0
    eventually(lambda: set(sides().values()) == {"facts@v1"}, 15, "the abort did not reach the gateway")
    eventually(lambda: every_server_holds(fleet, "facts@v1"), 15, "the aborted canary stayed loaded after the grace period")


@pytest.mark.slow
@pytest.mark.vllm
@postgresql_only
def test_a_revoked_version_leaves_vllm_at_once_and_is_never_served(fleet, cli, ws, tiny_model, settings):
    with ws.transaction() as session:
        [feedback_id] = feedback.log_records(
            session,
            [("facts", feedback.parse_record({"prompt": CHAT, "response": "x", "correction": "The code for room 3 is 1111."}))],
            actor="tester",
        )
    tainted = approved_version(ws, "facts", tiny_model, seed=3, trained_on=(feedback_id,))
    assert cli("promote", "facts", f"v{tainted}").returncode == 0
    fleet.sync("--grace", "10m")  # a replaced version would stay for 10 minutes; a revoked one must not
    eventually(lambda: every_server_holds(fleet, "facts@v3"), 30)
    gateway = fleet.gateway()
    eventually(lambda: gateway.chat(fleet.token["generate"])[1].get("model") == "facts@v3")
    exported = settings.home / "vllm-exports" / "facts@v3"
    assert (exported / "adapter_model.safetensors").is_file()

    started = time.monotonic()
    assert cli("feedback", "forget", "--id", str(feedback_id)).returncode == 0  # v3 is revoked; the line falls back to v2
    eventually(lambda: every_server_holds(fleet, "facts@v2"), 10, "the revoked version is still loaded")
    print(f"\nthe revoked version left both vLLM servers {time.monotonic() - started:.2f} s after `feedback forget`")
    eventually(lambda: not exported.exists(), 5, "the revoked version's export is still there")  # removed at the end of the pass
    seen = []
    eventually(lambda: seen.append(gateway.chat(fleet.token["generate"])) or seen[-1][1].get("model") == "facts@v2", 5)
    assert all(status == 200 or body["error"]["code"] == "upstream_unavailable" for status, body, _ in seen), seen
    status, body, _ = gateway.chat(fleet.token["generate"], model="facts@v3")
    assert status == 404 and body["error"]["code"] == "model_not_found"


@pytest.mark.slow
@pytest.mark.vllm
@sqlite_only
def test_requests_go_round_a_dead_upstream_and_one_that_lost_its_versions(fleet, cli):
    assert cli("promote", "facts", "v2").returncode == 0
    metrics_port = free_port()
    fleet.sync("--metrics-port", str(metrics_port))
    eventually(lambda: every_server_holds(fleet, "facts@v2"), 30)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        synced = response.read().decode()
    for server in fleet.servers:
        assert f'adapterctl_vllm_holds{{line="facts",server="{server.url}",version="v2"}} 1.0' in synced, synced
        assert f'adapterctl_vllm_in_step{{line="facts",server="{server.url}"}} 1.0' in synced
        assert f'adapterctl_vllm_loads_total{{server="{server.url}"}} 1.0' in synced
    dead = f"http://127.0.0.1:{free_port()}"
    gateway = fleet.gateway(dead, *(server.url for server in fleet.servers))
    client = LoopingClient(gateway, fleet.token["generate"])
    eventually(lambda: len(client.answers) >= 10, 60)
    restarted = fleet.servers[0]
    restarted.clear()  # as after a restart: it holds nothing until `vllm sync` loads the active version again
    eventually(lambda: restarted.adapters() == ["facts@v2"], 10, "vllm sync did not bring the restarted server back")
    count = len(client.answers)
    eventually(lambda: len(client.answers) >= count + 10, 60)
    answers = client.finish()
    assert all(status == 200 and model == "facts@v2" for status, model, _ in answers), [a for a in answers if a[0] != 200][:3]
    metrics = gateway.call("GET", "/metrics", token=fleet.token["admin"])[1]
    assert f'adapterctl_upstream_up{{upstream="{dead}"}} 0.0' in metrics
    for server in fleet.servers:  # the load went to both live servers
        served = next(
            line for line in metrics.splitlines() if line.startswith(f'adapterctl_upstream_requests_total{{upstream="{server.url}"}}')
        )
        assert float(served.split()[-1]) > 0, served

    nothing_up = fleet.gateway(dead)
    status, body, headers = nothing_up.chat(fleet.token["generate"])
    assert status == 503 and body["error"]["code"] == "upstream_unavailable" and headers["retry-after"], body


@pytest.mark.slow
@pytest.mark.vllm
@sqlite_only
def test_a_version_vllm_cannot_load_leaves_the_line_on_the_one_it_serves(fleet, cli, ws, tiny_model):
    assert cli("promote", "facts", "v1").returncode == 0
    sync = fleet.sync()
    eventually(lambda: every_server_holds(fleet, "facts@v1"), 30)
    gateway = fleet.gateway()
    too_big = approved_version(ws, "facts", tiny_model, seed=3, rank=32)  # the servers take rank 16 at most
    assert cli("promote", "facts", f"v{too_big}").returncode == 0
    time.sleep(3)  # 15 passes of `vllm sync`
    answers = [gateway.chat(fleet.token["generate"]) for _ in range(5)]
    assert all(status == 200 and body["model"] == "facts@v1" for status, body, _ in answers), answers
    report = cli.json("vllm", "status", "--url", fleet.servers[0].url, "--url", fleet.servers[1].url)
    assert report["lines"] == {"facts": "facts@v3"} and [s["in_step"] for s in report["servers"]] == [{"facts": False}] * 2
    sync.terminate()
    sync.wait(timeout=30)
    events = [json.loads(line) for line in (fleet.tmp / "sync-0.log").read_text().splitlines() if line.startswith("{")]
    failed = [e for e in events if e["action"] == "failed"]
    assert sorted((e["server"], e["name"]) for e in failed) == sorted((s.url, "facts@v3") for s in fleet.servers), failed  # once each
    assert all("rank" in e["reason"].lower() for e in failed), failed


@pytest.mark.slow
@pytest.mark.vllm
@sqlite_only
def test_the_gateway_answers_as_the_embedded_engine_does(fleet, cli, ws):
    """The same prompt tokens, stop strings, whitespace, n, logprobs and usage: only the engine differs."""
    from adapterctl.serving.runtime import Runtime

    assert cli("promote", "facts", "v1").returncode == 0
    assert cli("vllm", "sync", "--url", fleet.servers[0].url, "--url", fleet.servers[1].url, "--once").returncode == 0
    gateway = fleet.gateway()
    runtime = Runtime(ws, device="cpu")
    plain = runtime.generate("facts", CHAT, Sampling(max_tokens=12)).text
    cases = [
        ("facts", {}),
        ("facts@base", {}),
        ("facts", {"stop": [plain.split()[1][:2]]}),
        ("facts", {"n": 2}),
        ("facts", {"logprobs": True, "top_logprobs": 3}),
        ("facts", {"max_tokens": 3}),
    ]
    for model, options in cases:
        options = {"max_tokens": 12, **options}
        expected = runtime.generate(model, CHAT, Sampling(**{k: tuple(v) if k == "stop" else v for k, v in options.items()}))
        status, answer, _ = gateway.chat(fleet.token["generate"], model=model, **options)
        assert status == 200, answer
        assert answer["model"] == expected.served_by
        assert [(c["message"]["content"], c["finish_reason"]) for c in answer["choices"]] == [
            (c.text, c.finish_reason) for c in expected.choices
        ], (model, options)
        assert answer["usage"]["completion_tokens"] == expected.completion_tokens
        assert answer["usage"]["prompt_tokens"] == expected.prompt_tokens
        if options.get("logprobs"):
            got, want = answer["choices"][0]["logprobs"]["content"], expected.choices[0].logprobs
            assert [e["token"] for e in got] == [e["token"] for e in want]
            assert [[t["token"] for t in e["top_logprobs"]] for e in got] == [[t["token"] for t in e["top_logprobs"]] for e in want]
            assert max(abs(a["logprob"] - b["logprob"]) for a, b in zip(got, want)) < 1e-3
    status, body, _ = gateway.chat(fleet.token["generate"], max_tokens=250)  # fits the model (1024), not vLLM's --max-model-len 256
    assert status == 400 and body["error"]["code"] == "context_length_exceeded" and "256 tokens" in body["error"]["message"], body
    status, streamed, _ = gateway.call(
        "POST", "/v1/chat/completions", {"model": "facts", "messages": CHAT, "max_tokens": 12, "stream": True}, fleet.token["generate"]
    )
    pieces = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")]
    assert "".join(p["choices"][0]["delta"].get("content", "") for p in pieces if p["choices"]) == plain
    assert {p["model"] for p in pieces} == {"facts@v1"}


def test_bad_vllm_options_are_one_line_errors(ready):
    for args, named in (
        (["vllm", "sync", "--url", "ftp://x", "--once"], "--url"),
        (["vllm", "sync", "--url", "http://127.0.0.1:1/v1/models", "--once"], "--url"),
        (["vllm", "sync", "--url", "http://127.0.0.1:1", "--keep", "other@v1", "--once"], "--keep"),
        (["vllm", "sync", "--url", "http://127.0.0.1:1", "--grace", "soon", "--once"], "soon"),
        (["serve", "--engine", "vllm"], "--upstream"),
        (["serve", "--upstream", "http://127.0.0.1:1"], "--engine vllm"),
        (["serve", "--engine", "vllm", "--upstream", "http://127.0.0.1:1", "--pin", "support-bot@v1"], "--pin"),
    ):
        result = ready(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert named in result.stderr, (args, result.stderr)


def test_sync_reports_an_unreachable_server_and_exits_1(ready):
    port = free_port()
    result = ready("vllm", "sync", "--url", f"http://127.0.0.1:{port}", "--once", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["servers"][0]["up"] is False and "refused" in report["servers"][0]["error"].lower()
    assert [e["action"] for e in report["events"]] == ["unreachable"]
