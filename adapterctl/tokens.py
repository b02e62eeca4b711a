"""API tokens for the HTTP server: created once and shown once, stored as sha256, checked by scope.

Scopes: `generate` (completions and the model list), `feedback` (the feedback endpoint) and `admin`
(everything, including the metrics).
"""

from __future__ import annotations

import hashlib
import secrets
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


def create_token(session: Session, *, scope: str, actor: str, name: str | None = None) -> tuple[ApiToken, str]:
    """A new token; the returned secret is never stored and cannot be shown again."""
    if scope not in SCOPES:
        raise InvalidInput(f"--scope must be one of {', '.join(SCOPES)} (got {scope!r})")
    secret = PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(name=name, scope=scope, token_hash=digest(secret), created_by=actor)
    session.add(token)
    session.flush()
    audit.record(session, actor=actor, action="token.create", subject=f"token:{token.id}", payload={"scope": scope, "name": name})
    return token, secret


def revoke_token(session: Session, token_id: int, *, actor: str) -> None:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"token {token_id} does not exist; see `adapterctl token list`")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        audit.record(session, actor=actor, action="token.revoke", subject=f"token:{token_id}", payload={"scope": token.scope})


def scope_of(session: Session, secret: str) -> str | None:
    """The scope of a valid, unrevoked token; None otherwise."""
    return session.scalar(select(ApiToken.scope).where(ApiToken.token_hash == digest(secret), ApiToken.revoked_at.is_(None)))


def allows(scope: str | None, needed: str) -> bool:
    return scope == "admin" or scope == needed


def list_tokens(session: Session) -> list[dict[str, Any]]:
    return [{"id": t.id, "name": t.name, "scope": t.scope, "created_at": t.created_at.isoformat(), "created_by": t.created_by,
             "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None}
            for t in session.scalars(select(ApiToken).order_by(ApiToken.id))]
