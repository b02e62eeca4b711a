"""API tokens for the HTTP server: created once and shown once, stored as sha256, checked by scope.

Scopes: `generate` (completions and the model list), `feedback` (the feedback endpoint) and `admin`
(everything, including the metrics). A token may expire (`expires_at`) and may be revoked.

A presented token is found by the sha256 of what was presented, never by the token itself: a
database index comparing hashes leaks at most how much of a hash matched, which tells an attacker
nothing about a token (finding an input whose hash shares a longer prefix is a pre-image search).
The one comparison made in Python uses `hmac.compare_digest` all the same.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapterctl import audit
from adapterctl.db.models import ApiToken
from adapterctl.db.types import utcnow
from adapterctl.errors import InvalidInput, NotFound

SCOPES = ("generate", "feedback", "admin")
PREFIX = "actl_"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


MAX_LIFETIME = timedelta(days=3650)
_EXPIRES_IN = re.compile(r"(\d{1,9})([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class Grant:
    """What a valid token allows, and until when (None: until revoked)."""

    scope: str
    expires_at: datetime | None

    def valid_at(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at


def expiry(*, expires_in: str | None = None, expires_at: str | None = None, now: datetime | None = None) -> datetime | None:
    """When a new token expires: `--expires-in` 30d, 12h, 90m (also s, w) from now, or `--expires-at` an ISO 8601
    time (UTC when no zone is given); None for neither (the token lasts until revoked)."""
    now = now or utcnow()
    if expires_in is not None and expires_at is not None:
        raise InvalidInput("give --expires-in or --expires-at, not both")
    if expires_in is not None:
        match = _EXPIRES_IN.fullmatch(expires_in.strip())
        if not match or int(match[1]) == 0:
            raise InvalidInput(f"--expires-in {expires_in!r} is not a duration like 30d, 12h or 90m")
        try:
            lifetime = timedelta(**{_UNITS[match[2]]: int(match[1])})
        except OverflowError:
            lifetime = timedelta.max
        if lifetime > MAX_LIFETIME:
            raise InvalidInput(
                f"--expires-in {expires_in!r} is longer than {MAX_LIFETIME.days} days; leave it out for a token that lasts until revoked"
            )
        return now + lifetime
    if expires_at is not None:
        try:
            at = datetime.fromisoformat(expires_at.strip())
            at = at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)
        except (ValueError, OverflowError):
            raise InvalidInput(f"--expires-at {expires_at!r} is not an ISO 8601 time like 2030-01-31T18:00:00Z") from None
        if at <= now:
            raise InvalidInput(f"--expires-at {expires_at!r} is not in the future")
        return at
    return None


def create_token(
    session: Session, *, scope: str, actor: str, name: str | None = None, expires_at: datetime | None = None
) -> tuple[ApiToken, str]:
    """A new token; the returned secret is never stored and cannot be shown again."""
    if scope not in SCOPES:
        raise InvalidInput(f"--scope must be one of {', '.join(SCOPES)} (got {scope!r})")
    if name is not None and (len(name) > 128 or not name.isprintable()):
        raise InvalidInput("--name must be at most 128 printable characters")
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidInput(f"--expires-at {expires_at.isoformat()} is not in the future")
    secret = PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(name=name, scope=scope, token_hash=digest(secret), created_by=actor, expires_at=expires_at)
    session.add(token)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="token.create",
        subject=f"token:{token.id}",
        payload={"scope": scope, "name": name, "expires_at": expires_at.isoformat() if expires_at else None},
    )
    return token, secret


def revoke_token(session: Session, token_id: int, *, actor: str) -> None:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"token {token_id} does not exist; see `adapterctl token list`")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        audit.record(session, actor=actor, action="token.revoke", subject=f"token:{token_id}", payload={"scope": token.scope})


def grant_of(session: Session, secret: str) -> Grant | None:
    """What a presented token allows: None unless it is known, unrevoked and unexpired."""
    presented = digest(secret)
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == presented))
    if token is None or token.revoked_at is not None or not hmac.compare_digest(token.token_hash, presented):
        return None
    grant = Grant(token.scope, token.expires_at)
    return grant if grant.valid_at(utcnow()) else None


def scope_of(session: Session, secret: str) -> str | None:
    """The scope of a valid (known, unrevoked, unexpired) token; None otherwise."""
    grant = grant_of(session, secret)
    return grant.scope if grant else None


def allows(scope: str | None, needed: str) -> bool:
    return scope == "admin" or scope == needed


def state_of(token: ApiToken, now: datetime) -> str:
    if token.revoked_at is not None:
        return "revoked"
    return "expired" if token.expires_at is not None and token.expires_at <= now else "active"


def list_tokens(session: Session) -> list[dict[str, Any]]:
    now = utcnow()
    return [
        {
            "id": t.id,
            "name": t.name,
            "scope": t.scope,
            "state": state_of(t, now),
            "created_at": t.created_at.isoformat(),
            "created_by": t.created_by,
            "expires_at": t.expires_at.isoformat() if t.expires_at else None,
            "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
        }
        for t in session.scalars(select(ApiToken).order_by(ApiToken.id))
    ]
