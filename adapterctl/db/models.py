"""The relational schema. Alembic migrations in `adapterctl/migrations` own it; a test keeps both equal."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, MetaData, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from adapterctl.db.types import BigId, UTCDateTime, utcnow

# SQLite batch migrations can only alter constraints that have names.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    # none_as_null: a Python None is SQL NULL (erased content), not the JSON value null.
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(none_as_null=True), list[Any]: JSON(none_as_null=True)}


class BaseModel(Base):
    """A frozen Hugging Face causal LM that lines put adapters on."""

    __tablename__ = "base_models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    source: Mapped[str] = mapped_column(String(1024))  # local directory or hub id
    source_kind: Mapped[str] = mapped_column(String(16))  # "local" | "hub"
    revision: Mapped[str | None] = mapped_column(String(64))  # hub commit the source resolved to
    content_hash: Mapped[str] = mapped_column(String(64))
    files: Mapped[dict[str, Any]]  # relative path -> sha256 of every hashed file
    architecture: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))


class Line(Base):
    """A named stream of adapters on one base model; feedback, training, review and activation are per line."""

    __tablename__ = "lines"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id", ondelete="RESTRICT"))
    description: Mapped[str | None] = mapped_column(Text)
    settings: Mapped[dict[str, Any]]  # adapterctl.lines.LineSettings as a dict
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))

    base_model: Mapped[BaseModel] = relationship(lazy="joined")


class Feedback(Base):
    """One record about one model answer. A forgotten record keeps only its tombstone fields."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    line_id: Mapped[int] = mapped_column(ForeignKey("lines.id", ondelete="RESTRICT"))
    status: Mapped[str] = mapped_column(String(16), default="active")  # "active" | "forgotten"
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    content_hash: Mapped[str] = mapped_column(String(64))
    times_seen: Mapped[int] = mapped_column(default=1)
    prompt: Mapped[list[Any] | None]  # chat messages [{role, content}]
    response: Mapped[str | None] = mapped_column(Text)
    rating: Mapped[float | None] = mapped_column(Float)
    correction: Mapped[str | None] = mapped_column(Text)
    chosen: Mapped[str | None] = mapped_column(Text)
    rejected: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(String(256))
    tags: Mapped[list[Any] | None]
    adapter_version: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(128))
    logged_by: Mapped[str] = mapped_column(String(128))
    forgotten_at: Mapped[datetime | None]
    forgotten_by: Mapped[str | None] = mapped_column(String(128))
    forget_reason: Mapped[str | None] = mapped_column(Text)

    line: Mapped[Line] = relationship()

    __table_args__ = (
        # What the training job reads: a line's active feedback in time order.
        Index("ix_feedback_line_status_created", "line_id", "status", "created_at"),
        Index("ix_feedback_source", "source"),
        Index("ix_feedback_content_hash", "content_hash"),
        # Exact duplicates of live feedback are stored once; a tombstone does not block new data.
        Index(
            "uq_feedback_line_hash_active",
            "line_id",
            "content_hash",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
    )


class AuditEvent(Base):
    """An append-only, hash-chained record of one state change."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(256))
    payload: Mapped[str] = mapped_column(Text)  # canonical JSON, hashed exactly as stored
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)

    __table_args__ = (Index("ix_audit_events_subject", "subject"), Index("ix_audit_events_action", "action"))
