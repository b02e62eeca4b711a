"""Who may do what: the role each state-changing action needs, checked in the action's own transaction.

People are registered by name with a role (`adapterctl reviewer add NAME --role reviewer|admin`); an
admin may do everything a reviewer may. Until the first admin is registered the deployment is being
set up, and anyone may act (set-up mode); from then on every action in ACTIONS needs its role. Review
decisions are the exception: they always need a registered person, set-up mode or not, since a version
is "approved by a named reviewer" by definition.

The acting person is who the CLI is told it is (`--user`, ADAPTERCTL_USER, the OS login). Roles keep
people to their part and name who acted; they do not authenticate: whoever can write the database can
claim any name, or change it directly (docs/security.md, "Threat model").

Not listed, so open to anyone who can reach the database: reading and reports; logging and importing
feedback; training and evaluating (they make candidates, which only reviewers turn into versions);
`serve`, `canary watch` and `vllm sync` without --auto-complete; `init`, `db upgrade` and `backup`; `restore`,
which writes only into an empty database (whose people are the backup's, from then on). Automatic
actions are not commands and need no role: a watcher aborting a worse canary and forget's fallback to a
clean version act under rules that admins set (the line's settings) and reviewers started.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapterctl.db.models import Reviewer
from adapterctl.errors import NotFound, PermissionDenied

REVIEWER, ADMIN = "reviewer", "admin"
_RANK = {REVIEWER: 1, ADMIN: 2}


@dataclass(frozen=True)
class Rule:
    role: str
    """The least role the action needs: reviewer (reviewers and admins) or admin."""
    what: str
    """The action in words, for the refusal: `only admins may {what}`."""
    command: str
    """The command line that performs it."""
    always: bool = False
    """Needed in set-up mode too (review decisions)."""


ACTIONS: dict[str, Rule] = {
    "review.approve": Rule(REVIEWER, "approve candidates", "review approve", always=True),
    "review.reject": Rule(REVIEWER, "reject candidates", "review reject", always=True),
    "promote": Rule(REVIEWER, "promote versions", "promote"),
    "canary.start": Rule(REVIEWER, "start canaries", "promote --canary"),
    "rollback": Rule(REVIEWER, "roll lines back", "rollback"),
    "canary.set": Rule(REVIEWER, "change a canary's share", "canary set"),
    "canary.complete": Rule(REVIEWER, "complete canaries", "canary complete"),
    "canary.abort": Rule(REVIEWER, "abort canaries", "canary abort"),
    "canary.auto_complete": Rule(REVIEWER, "let a watcher complete canaries", "canary watch --auto-complete, serve --auto-complete"),
    "eval.suite.add": Rule(REVIEWER, "add evaluation suites", "eval suite add"),
    "feedback.forget": Rule(REVIEWER, "forget feedback", "feedback forget"),
    "feedback.quarantine": Rule(REVIEWER, "quarantine feedback sources", "feedback quarantine"),
    "feedback.release": Rule(REVIEWER, "release quarantined sources", "feedback release"),
    "line.create": Rule(ADMIN, "create lines", "line create"),
    "line.set": Rule(ADMIN, "change line settings", "line set"),
    "base.register": Rule(ADMIN, "register base models", "base register"),
    "token.create": Rule(ADMIN, "create API tokens", "token create"),
    "token.revoke": Rule(ADMIN, "revoke API tokens", "token revoke"),
    "reviewer.add": Rule(ADMIN, "add reviewers", "reviewer add"),
    "reviewer.remove": Rule(ADMIN, "remove reviewers", "reviewer remove"),
    "doctor.repair": Rule(ADMIN, "repair the home", "doctor --repair"),
}


def role_of(session: Session, person: str) -> str | None:
    """The role of a registered person; None for anyone else."""
    return session.scalar(select(Reviewer.role).where(Reviewer.name == person))


def setting_up(session: Session) -> bool:
    """True until the first admin is registered."""
    return not session.scalar(select(func.count()).select_from(Reviewer).where(Reviewer.role == ADMIN))


def require(session: Session, actor: str, action: str) -> None:
    """Refuse `actor` the `action` unless their role allows it (anyone may act in set-up mode, but review decisions)."""
    rule = ACTIONS[action]
    role = role_of(session, actor)
    if rule.always and role is None:
        raise NotFound(f"{actor!r} is not a registered reviewer; see `adapterctl reviewer list`")
    if _RANK.get(role or "", 0) >= _RANK[rule.role] or (not rule.always and setting_up(session)):
        return
    who = "admins" if rule.role == ADMIN else "reviewers and admins"
    status = "not registered" if role is None else f"a {role}"
    raise PermissionDenied(
        f"only {who} may {rule.what} ({rule.command}); {actor!r} is {status} "
        f"(act as one with ADAPTERCTL_USER or --user; admins register people with `adapterctl reviewer add`)"
    )
