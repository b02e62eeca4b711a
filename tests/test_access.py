"""Access: the role every state-changing command needs (the real CLI, as each person runs it), the token
scope every HTTP route needs (a real server on loopback), token expiry and revocation, and what the
server's log must never hold."""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from adapterctl import access, feedback, review, tokens
from adapterctl.artifacts import ArtifactStore
from adapterctl.db.models import ApiToken, AuditEvent, Base
from adapterctl.db.types import utcnow
from adapterctl.errors import InvalidInput
from tests.conftest import write_model_dir
from tests.test_activations import version

ADMIN, REVIEWER, NOBODY = "ada", "bob", "mallory"
DOCS = Path(__file__).parent.parent / "docs" / "security.md"


# ---------------------------------------------------------------- roles on every state-changing command


@dataclass
class Step:
    action: str
    argv: list[str]
    writes: bool = True
    """Whether the allowed command changes something (a watcher with nothing to judge does not)."""
    check: str = "both"
    """both: refused to the wrong people, then allowed; setup: only sets up the next step, run by someone allowed;
    refusals: only refused (allowed, it would start a server)."""


def steps(world: dict) -> list[Step]:
    """Every action of access.ACTIONS that has a command, in an order in which each one succeeds."""
    line = world["line"]
    return [
        Step("base.register", ["base", "register", "second", str(world["model_dir"])]),
        Step("line.create", ["line", "create", "other", "--base", "tiny"]),
        Step("line.set", ["line", "set", line, "min_examples=3"]),
        Step("token.create", ["token", "create", "--scope", "generate"]),
        Step("token.revoke", ["token", "revoke", str(world["token"])]),
        Step("reviewer.add", ["reviewer", "add", "yan", "--role", "reviewer"]),
        Step("reviewer.remove", ["reviewer", "remove", "zed"]),
        Step("eval.suite.add", ["eval", "suite", "add", "policies", str(world["suite"]), "--line", line]),
        Step("review.approve", ["review", "approve", str(world["pending"][0])]),
        Step("review.reject", ["review", "reject", str(world["pending"][1]), "--reason", "too terse"]),
        Step("promote", ["promote", line, "v1"]),
        Step("canary.start", ["promote", line, "v2", "--canary", "10%"]),
        Step("canary.set", ["canary", "set", line, "50%"]),
        Step("canary.abort", ["canary", "abort", line]),
        Step("canary.start", ["promote", line, "v2", "--canary", "10%"], check="setup"),
        Step("canary.complete", ["canary", "complete", line]),
        Step("rollback", ["rollback", line]),
        Step("canary.auto_complete", ["canary", "watch", "--auto-complete", "--once"], writes=False),
        Step("canary.auto_complete", ["serve", "--auto-complete", "--port", "1"], writes=False, check="refusals"),
        Step("feedback.quarantine", ["feedback", "quarantine", "--source", "user-7", "--reason", "flagged"]),
        Step("feedback.release", ["feedback", "release", "--source", "user-7"]),
        Step("feedback.forget", ["feedback", "forget", "--id", str(world["feedback"]), "--no-vacuum"]),
        Step("doctor.repair", ["doctor", "--repair"]),
    ]


def make_world(ws, line, tmp_path, *, admin: bool) -> dict:
    """A line with two approved versions, two pending candidates, a token, a feedback record, a reviewer to remove,
    an orphan folder for `doctor --repair`, a suite file and a second model; `admin`: ada is registered as admin."""
    world = {
        "line": line,
        "model_dir": write_model_dir(tmp_path / "second-model", weight=2.0),
        "suite": tmp_path / "suite.jsonl",
        "orphan": ArtifactStore(ws.settings.artifacts_dir).root / line / "99",
    }
    world["suite"].write_text(json.dumps({"prompt": "What is the refund window?", "expected": "30 days."}) + "\n")
    version(ws, line, fill=0.1)
    version(ws, line, fill=0.2)
    world["pending"] = [version(ws, line, status="pending_review", fill=0.3), version(ws, line, status="pending_review", fill=0.4)]
    world["orphan"].mkdir(parents=True)
    (world["orphan"] / "adapter_model.safetensors").write_bytes(b"left by a run that died")
    with ws.transaction() as session:
        world["token"] = tokens.create_token(session, scope="generate", actor="setup")[0].id
        world["feedback"] = feedback.log_feedback(session, line=line, prompt="Hi", response="Hello", rating=1, actor="setup")
        review.add_reviewer(session, name=REVIEWER, role="reviewer", actor="setup")
        review.add_reviewer(session, name="zed", role="reviewer", actor="setup")
        if admin:
            review.add_reviewer(session, name=ADMIN, role="admin", actor="setup")
    return world


def fingerprint(ws, world: dict) -> tuple[dict[str, int], str]:
    """Row counts of every table and a hash of every row, and whether the orphan folder is still there."""
    counts, rows = {}, hashlib.sha256()
    with ws.reading() as session:
        for table in Base.metadata.sorted_tables:
            found = session.execute(select(table).order_by(*table.primary_key.columns)).all()
            counts[table.name] = len(found)
            rows.update(repr(found).encode())
    counts["orphan folder"] = int(world["orphan"].exists())
    return counts, rows.hexdigest()


def audit_count(ws) -> int:
    with ws.reading() as session:
        return session.scalar(select(func.count()).select_from(AuditEvent))


def refused(cli, ws, world, step: Step, *users: str) -> list[str]:
    """Run a step as people it must refuse, at once; nothing may change. Their one-line reasons."""
    from concurrent.futures import ThreadPoolExecutor

    before = fingerprint(ws, world)
    with ThreadPoolExecutor(len(users)) as pool:
        results = list(pool.map(lambda user: cli(*step.argv, user=user), users))
    code = 2 if access.ACTIONS[step.action].always else 1
    for user, result in zip(users, results):
        assert result.returncode == code, (step, user, result.returncode, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert fingerprint(ws, world) == before, (step, users)
    return [result.stderr.strip() for result in results]


def allowed(cli, ws, step: Step, user: str) -> None:
    before = audit_count(ws)
    result = cli(*step.argv, user=user)
    assert result.returncode == 0, (step, user, result.stdout, result.stderr)
    assert (audit_count(ws) > before) == step.writes, step


def test_every_action_in_the_table_has_a_step():
    covered = {step.action for step in steps({"line": "l", "model_dir": "m", "suite": "s", "token": 1, "pending": [1, 2], "feedback": 1})}
    assert covered == set(access.ACTIONS)


@pytest.mark.slow
def test_once_an_admin_exists_each_command_needs_its_role(ws, line, cli, tmp_path):
    world = make_world(ws, line, tmp_path, admin=True)
    for step in steps(world):
        rule = access.ACTIONS[step.action]
        least = ADMIN if rule.role == "admin" else REVIEWER
        if step.check == "setup":
            allowed(cli, ws, step, least)
            continue
        message, *too_low = refused(cli, ws, world, step, NOBODY, *([REVIEWER] if rule.role == "admin" else []))
        if rule.always:
            assert f"{NOBODY!r} is not a registered reviewer" in message, message
        else:
            assert f"only {'admins' if rule.role == 'admin' else 'reviewers and admins'} may {rule.what}" in message, message
            assert f"{NOBODY!r} is not registered" in message, message
        assert all(f"{REVIEWER!r} is a reviewer" in reason for reason in too_low), too_low
        if step.check == "both":
            allowed(cli, ws, step, least)
    assert not world["orphan"].exists()  # the last step, allowed, repaired it


@pytest.mark.slow
def test_until_the_first_admin_anyone_may_act_but_decisions_need_a_reviewer(ws, line, cli, tmp_path):
    world = make_world(ws, line, tmp_path, admin=False)
    for step in steps(world):
        if step.check == "refusals":  # allowed, it starts a server: `canary watch --auto-complete` stands for it
            continue
        if access.ACTIONS[step.action].always:
            assert f"{NOBODY!r} is not a registered reviewer" in refused(cli, ws, world, step, NOBODY)[0]
            allowed(cli, ws, step, REVIEWER)
        else:
            allowed(cli, ws, step, NOBODY)


def test_the_docs_table_of_who_may_do_what_matches_the_code():
    rows = re.findall(r"^\| `([^`]+)` \| (reviewer|admin)[^|]*\| `([a-z_.]+)` \|", DOCS.read_text(), re.MULTILINE)
    assert {action: (command, role) for command, role, action in rows} == {
        action: (rule.command, rule.role) for action, rule in access.ACTIONS.items()
    }


# ---------------------------------------------------------------- tokens: expiry, revocation, constant-time lookup


def test_expiry_options_are_parsed_and_bad_ones_refused_naming_the_option():
    now = utcnow()
    assert tokens.expiry(expires_in="30d", now=now) == now + timedelta(days=30)
    assert tokens.expiry(expires_in="12h", now=now) == now + timedelta(hours=12)
    assert tokens.expiry(expires_in="90m", now=now) == now + timedelta(minutes=90)
    assert tokens.expiry(expires_at="2999-01-31T18:00:00", now=now).isoformat() == "2999-01-31T18:00:00+00:00"  # UTC without a zone
    assert tokens.expiry(expires_at="2999-01-31T18:00:00+02:00", now=now).isoformat() == "2999-01-31T16:00:00+00:00"
    assert tokens.expiry(now=now) is None
    for bad, option in (
        (dict(expires_in="30"), "--expires-in"),
        (dict(expires_in="0d"), "--expires-in"),
        (dict(expires_in="-1d"), "--expires-in"),
        (dict(expires_in="99999999w"), "--expires-in"),
        (dict(expires_at="yesterday"), "--expires-at"),
        (dict(expires_at="2001-01-01"), "--expires-at"),
        (dict(expires_at="0001-01-01T00:00+05:00"), "--expires-at"),
        (dict(expires_in="1d", expires_at="2999-01-01"), "--expires-in or --expires-at"),
    ):
        with pytest.raises(InvalidInput, match=re.escape(option)):
            tokens.expiry(**bad, now=now)


def test_token_list_shows_expiry_and_state_and_bad_expiries_write_nothing(ws, cli):
    created = json.loads(cli("token", "create", "--scope", "generate", "--expires-in", "12h", "--json").stdout)
    assert created["expires_at"] is not None and created["token"].startswith(tokens.PREFIX)
    lasting = json.loads(cli("token", "create", "--scope", "feedback", "--json").stdout)
    revoked = json.loads(cli("token", "create", "--scope", "admin", "--expires-at", "2999-01-01T00:00:00Z", "--json").stdout)
    assert cli("token", "revoke", str(revoked["id"])).returncode == 0
    with ws.transaction() as session:  # the clock moves on: the 12 h are over
        session.execute(update(ApiToken).where(ApiToken.id == created["id"]).values(expires_at=utcnow() - timedelta(seconds=1)))
        assert tokens.scope_of(session, created["token"]) is None and tokens.scope_of(session, lasting["token"]) == "feedback"
        assert tokens.scope_of(session, revoked["token"]) is None and tokens.scope_of(session, created["token"] + "x") is None
    listed = {row["id"]: row for row in cli.json("token", "list")}
    assert [listed[t["id"]]["state"] for t in (created, lasting, revoked)] == ["expired", "active", "revoked"]
    assert listed[lasting["id"]]["expires_at"] is None and listed[revoked["id"]]["expires_at"].startswith("2999-01-01T00:00:00")
    assert "expired" in cli("token", "list").stdout
    before = audit_count(ws)
    for args, option in (
        (["--expires-in", "soon"], "--expires-in"),
        (["--expires-at", "2001-01-01"], "--expires-at"),
        (["--expires-in", "1d", "--expires-at", "2999-01-01"], "--expires-at"),
    ):
        result = cli("token", "create", "--scope", "generate", *args)
        assert result.returncode == 2 and option in result.stderr and result.stdout == "", (args, result.stderr)
    assert audit_count(ws) == before and len(cli.json("token", "list")) == 3


# ---------------------------------------------------------------- the HTTP routes, against a real server

ROUTE_SCOPES = {
    "/v1/chat/completions": "generate",
    "/v1/models": "generate",
    "/v1/feedback": "feedback",
    "/metrics": "admin",
    "/healthz": None,
    "/openapi.json": None,
}
"""The scope each route of the server needs (None: public). A route missing here fails the test: decide its scope."""


@pytest.fixture
def server(ws, tiny_line, cli):
    """`adapterctl serve` on loopback for line `facts` (base model only); stopped afterwards."""
    from tests.test_server import Server

    started = []

    def start(*args: str) -> Server:
        started.append(Server(cli, *args))
        return started[-1]

    yield start
    for one in started:
        if one.process.poll() is None:
            one.stop()


def request_status(server, method: str, path: str, token: str | None) -> int:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = b"{}" if method in ("POST", "PUT", "PATCH") else None
    connection.request(
        method, path, body=body, headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    )
    status = connection.getresponse().status
    connection.close()
    return status


@pytest.mark.slow
def test_every_route_needs_its_scope(ws, tiny_line, cli, server):
    from adapterctl.serving.runtime import Runtime
    from adapterctl.serving.server import create_app

    app = create_app(ws, Runtime(ws, device="cpu")).app
    routes = sorted({(method, route.path) for route in app.routes for method in getattr(route, "methods", None) or ("GET",)})
    assert {path for _, path in routes} <= set(ROUTE_SCOPES), "a route without an entry in ROUTE_SCOPES: decide which scope it needs"
    scoped = {scope: cli("token", "create", "--scope", scope).stdout.strip() for scope in tokens.SCOPES}
    running = server()
    for method, path in routes:
        needed = ROUTE_SCOPES[path]
        if needed is None:
            assert request_status(running, method, path, None) not in (401, 403), (method, path)
            continue
        assert request_status(running, method, path, None) == 401, (method, path)
        assert request_status(running, method, path, tokens.PREFIX + "not-a-token") == 401, (method, path)
        for scope, token in scoped.items():
            status = request_status(running, method, path, token)
            if tokens.allows(scope, needed):
                assert status not in (401, 403), (method, path, scope, status)
            else:
                assert status == 403, (method, path, scope, status)


@pytest.mark.slow
def test_expired_and_revoked_tokens_are_refused(ws, tiny_line, cli, server):
    from adapterctl.serving.server import TOKEN_CACHE_S

    running = server()
    # A token expiring while its lookup is cached is refused from its expiry on: no request sent after it is answered.
    with ws.transaction() as session:
        token, brief = tokens.create_token(session, scope="generate", actor="tester", expires_at=utcnow() + timedelta(seconds=5))
        expires_at = token.expires_at
    answered = []
    while (sent := utcnow()) < expires_at + timedelta(seconds=1):
        answered.append((sent, running.call("GET", "/v1/models", token=brief)[0]))
        time.sleep(0.1)
    assert answered[0][1] == 200 and all(status == 401 for at, status in answered if at >= expires_at), answered
    assert running.call("GET", "/v1/models", token=brief)[0] == 401

    expiring = json.loads(cli("token", "create", "--scope", "generate", "--expires-in", "1h", "--json").stdout)
    revoked = json.loads(cli("token", "create", "--scope", "generate", "--json").stdout)
    for secret in (expiring["token"], revoked["token"]):
        assert running.call("GET", "/v1/models", token=secret)[0] == 200
    with ws.transaction() as session:  # as if the hour had passed
        session.execute(update(ApiToken).where(ApiToken.id == expiring["id"]).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert cli("token", "revoke", str(revoked["id"])).returncode == 0
    changed, refused_tokens = time.monotonic(), set()
    while len(refused_tokens) < 2:  # a server looks a token up again at most TOKEN_CACHE_S after its last lookup
        assert time.monotonic() < changed + TOKEN_CACHE_S + 10, f"still accepted {TOKEN_CACHE_S:g} s after: {refused_tokens}"
        refused_tokens |= {
            secret for secret in (expiring["token"], revoked["token"]) if running.call("GET", "/v1/models", token=secret)[0] == 401
        }
        time.sleep(0.2)


@pytest.mark.slow
def test_the_server_log_holds_no_token_and_no_feedback_text(ws, tiny_line, tiny_model, cli, server):
    from tests.test_runtime import approved_version

    approved_version(ws, tiny_line, tiny_model, seed=1)
    generate = cli("token", "create", "--scope", "generate").stdout.strip()
    rater = cli("token", "create", "--scope", "feedback").stdout.strip()
    secrets = [generate, rater, tokens.PREFIX + "guessed-token-5521"]
    texts = ["aardvark-prompt-9931", "zebra-correction-4417", "okapi-source-2286", "narwhal-tag-7310", "quokka-bad-field-6604"]
    running = server()
    chat = [{"role": "user", "content": f"My locker code is {texts[0]}."}]
    status, answer, _ = running.call("POST", "/v1/chat/completions", {"model": "facts", "messages": chat, "max_tokens": 8}, generate)
    assert status == 200
    status, _, _ = running.call(
        "POST", "/v1/chat/completions", {"model": "facts", "messages": chat, "max_tokens": 8, "stream": True}, generate
    )
    assert status == 200
    sent = {"response_id": answer["id"], "rating": -1, "correction": f"It is {texts[1]}.", "source": texts[2], "tags": [texts[3]]}
    assert running.call("POST", "/v1/feedback", sent, rater)[0] == 200
    assert running.call("POST", "/v1/feedback", {**sent, "rating": texts[4]}, rater)[0] == 400
    assert running.call("POST", "/v1/feedback", {**sent, texts[4]: 1}, rater)[0] == 400
    assert running.call("POST", "/v1/feedback", sent, generate)[0] == 403
    assert running.call("POST", "/v1/feedback", sent, secrets[2])[0] == 401
    assert running.call("POST", "/v1/chat/completions", {"model": texts[4], "messages": chat}, generate)[0] == 404
    assert cli("promote", "facts", "v1").returncode == 0  # an INFO line: the log is at INFO
    deadline = time.monotonic() + 30
    while running.chat(generate)[1]["model"] != "facts@v1":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    running.process.terminate()
    running.process.wait(timeout=30)
    log = running.output()
    running.log.close()
    assert "INFO" in log and "facts: now serving v1" in log, log
    leaked = [text for text in [*secrets, *texts, tokens.digest(generate)] if text in log]
    assert not leaked, f"{leaked} in the server's log:\n{log}"
