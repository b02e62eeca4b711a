"""Canary releases through real `adapterctl serve` processes on PostgreSQL: sticky routing by end user on
every server of a fleet, share changes, abort and completion, and the automatic rollback of a bad canary."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from tests.conftest import postgresql_only
from tests.test_runtime import approved_version
from tests.test_server import CHAT
from tests.test_server import serving as serving_fixture

serving = serving_fixture  # the fixture of test_server: two approved versions of `facts`, tokens, a server starter

pytestmark = pytest.mark.slow
USERS = [f"user-{i}" for i in range(24)]


def answered_by(server, token, user: str | None = None, header: str | None = None) -> tuple[int, dict]:
    body = {"model": "facts", "messages": CHAT, "max_tokens": 1, **({"user": user} if user else {})}
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {token['generate']}",
        **({"X-User-Id": header} if header else {}),
    }
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/v1/chat/completions", data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def sides(servers, token) -> dict[str, str]:
    """The version each user gets, asked on every server in turn: it must be the same on all."""
    seen = {}
    for user in USERS:
        models = {answered_by(server, token, user)[1]["model"] for server in servers}
        assert len(models) == 1, f"{user} got {models} from different servers"
        seen[user] = models.pop()
    return seen


def split_seen(a, b, token, condition) -> dict[str, str] | None:
    seen = sides([a, b], token)
    return seen if condition(seen) else None


def until(condition, within_s: float = 10.0, what: str = "the servers to follow"):
    deadline = time.monotonic() + within_s
    while not (result := condition()):
        assert time.monotonic() < deadline, f"waited {within_s} s for {what}"
        time.sleep(0.2)
    return result


def history(cli) -> list[dict]:
    return cli.json("history", "facts")


def aborted(cli) -> dict | None:
    """The newest activation, if it is a canary's abort."""
    last = history(cli)[-1]
    return last if last["kind"] == "canary_abort" else None


@postgresql_only
def test_users_keep_their_side_on_every_server_as_the_share_grows_and_abort_and_completion_reach_all(serving, cli):
    start, token = serving
    assert cli("promote", "facts", "v1").returncode == 0
    a, b = start("--canary-key-header", "X-User-Id"), start()
    assert cli("promote", "facts", "v2", "--canary", "30%").returncode == 0
    at_30 = until(lambda: split_seen(a, b, token, lambda seen: "facts@v2" in seen.values()))
    on_canary = {user for user, model in at_30.items() if model == "facts@v2"}
    assert 2 <= len(on_canary) <= 14 and set(at_30.values()) == {"facts@v1", "facts@v2"}
    assert sides([a, b], token) == at_30  # asked again: the same sides
    header_side = answered_by(a, token, header=sorted(on_canary)[0])[1]["model"]
    assert header_side == "facts@v2"  # the operator's header names the user when the body does not

    assert cli("canary", "set", "facts", "70%").returncode == 0
    at_70 = until(lambda: split_seen(a, b, token, lambda seen: sum(m == "facts@v2" for m in seen.values()) > len(on_canary)))
    assert on_canary <= {user for user, model in at_70.items() if model == "facts@v2"}  # nobody left the canary

    assert cli("canary", "abort", "facts", "--reason", "checking the abort").returncode == 0
    until(lambda: set(sides([a, b], token).values()) == {"facts@v1"})
    assert cli("promote", "facts", "v2", "--canary", "10%").returncode == 0
    status = cli.json("canary", "status", "facts")["canary"]
    assert (status["share"], status["baseline"]["version"], status["canary"]["version"]) == (0.1, "facts@v1", "facts@v2")
    assert cli("canary", "complete", "facts").returncode == 0
    until(lambda: set(sides([a, b], token).values()) == {"facts@v2"})
    kinds = [entry["kind"] for entry in history(cli)]
    assert kinds == ["promote", "canary", "canary_set", "canary_abort", "canary", "promote"]


@postgresql_only
def test_a_canary_users_rate_down_is_rolled_back_by_the_server_with_the_evidence(serving, ws, cli):
    """The synthetic rater: every answer of v1 rated up, every answer of v2 down; the server's watcher aborts."""
    start, token = serving
    assert cli("promote", "facts", "v1").returncode == 0
    assert cli("line", "set", "facts", "canary.min_feedback=20", "canary.prior_ratings=50").returncode == 0
    a, b = start(), start("--no-canary-watch")
    assert cli("promote", "facts", "v2", "--canary", "50%").returncode == 0
    until(lambda: "facts@v2" in sides([a], token).values())
    for turn in range(400):
        if history(cli)[-1]["kind"] == "canary_abort":
            break
        status, answer = answered_by(b, token, f"rater-{turn}")
        assert status == 200
        rating = 1 if answer["model"] == "facts@v1" else -1
        request = urllib.request.Request(
            f"http://127.0.0.1:{a.port}/v1/feedback",
            headers={"Authorization": f"Bearer {token['feedback']}", "Content-Type": "application/json"},
            data=json.dumps({"response_id": answer["id"], "rating": rating}).encode(),
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
    last = until(lambda: aborted(cli), 10, "the automatic rollback")
    assert last["reason"].startswith("automatic rollback: the canary's thumbs-up rate is at most"), last["reason"]
    assert "facts@v2 0/" in last["reason"]  # the counts behind it
    until(lambda: set(sides([a, b], token).values()) == {"facts@v1"})


@postgresql_only
def test_a_canary_that_fails_requests_is_rolled_back_by_the_server(serving, ws, cli, tiny_model, tiny_line):
    start, token = serving
    approved_version(ws, tiny_line, tiny_model, seed=3, broken=True)  # NaN weights: sampling from it fails
    assert cli("promote", "facts", "v1").returncode == 0
    server = start()
    assert cli("promote", "facts", "v3", "--canary", "50%").returncode == 0
    failures = 0
    for turn in range(300):
        if history(cli)[-1]["kind"] == "canary_abort":
            break
        body = {"model": "facts", "messages": CHAT, "max_tokens": 1, "temperature": 1.0, "user": f"u{turn}"}
        failures += server.call("POST", "/v1/chat/completions", body, token["generate"])[0] == 500
    last = until(lambda: aborted(cli), 10, "the automatic rollback")
    assert failures >= 10 and "automatic rollback: the canary failed" in last["reason"], last
    for turn in range(10):
        body = {"model": "facts", "messages": CHAT, "max_tokens": 1, "temperature": 1.0, "user": f"u{turn}"}
        status, answer, _ = server.call("POST", "/v1/chat/completions", body, token["generate"])
        assert status == 200 and answer["model"] == "facts@v1"
