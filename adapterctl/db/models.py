"""The relational schema. Alembic migrations in `adapterctl/migrations` own it; a test keeps both equal."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, MetaData, String, Text, UniqueConstraint, text
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
    chat_roles: Mapped[list[Any] | None]  # message roles its chat template renders; None: not known
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


class TrainingRun(Base):
    """One execution of the batch job for a line: what it used, how, where, and how it went."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    line_id: Mapped[int] = mapped_column(ForeignKey("lines.id", ondelete="RESTRICT"))
    status: Mapped[str] = mapped_column(String(16))  # running | succeeded | failed | interrupted
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    started_by: Mapped[str] = mapped_column(String(128))
    host: Mapped[str] = mapped_column(String(256))
    base_model_hash: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]]  # hyper-parameters, seed, device, versions
    dataset: Mapped[dict[str, Any]]  # counts, source distribution, what hygiene dropped
    metrics: Mapped[dict[str, Any] | None]  # loss curve, tokens/s, timings
    error: Mapped[str | None] = mapped_column(Text)

    line: Mapped[Line] = relationship()

    __table_args__ = (Index("ix_training_runs_line_status", "line_id", "status"),)


class RunExample(Base):
    """Lineage: one feedback record a run used, and how (train, heldout or replay)."""

    __tablename__ = "run_examples"

    run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id", ondelete="CASCADE"), primary_key=True)
    feedback_id: Mapped[int] = mapped_column(BigId, ForeignKey("feedback.id", ondelete="RESTRICT"), primary_key=True)
    split: Mapped[str] = mapped_column(String(16))  # train | heldout | replay

    __table_args__ = (Index("ix_run_examples_feedback", "feedback_id"),)


class Adapter(Base):
    """A candidate adapter a run produced; it becomes a version (v1, v2, ...) when approved.

    A candidate takes the id of its run, so its artifact folder can be named before the row exists.
    """

    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    line_id: Mapped[int] = mapped_column(ForeignKey("lines.id", ondelete="RESTRICT"))
    run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id", ondelete="RESTRICT"), unique=True)
    status: Mapped[str] = mapped_column(String(16))  # see adapterctl.registry.TRANSITIONS
    version: Mapped[int | None]
    artifact_path: Mapped[str] = mapped_column(String(512))  # relative to the artifact store
    sha256: Mapped[str] = mapped_column(String(64))  # of the artifact's manifest
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_reason: Mapped[str | None] = mapped_column(Text)

    line: Mapped[Line] = relationship()
    run: Mapped[TrainingRun] = relationship()

    __table_args__ = (
        UniqueConstraint("line_id", "version", name="uq_adapters_line_version"),
        Index("ix_adapters_line_status", "line_id", "status"),
    )


class Lease(Base):
    """A lock that expires: the holder renews it while alive, so a dead holder cannot block forever."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)  # e.g. train:support-bot
    holder: Mapped[str] = mapped_column(String(256))
    acquired_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class EvalSuite(Base):
    """One version of a named set of cases on a line: regression cases, or the reference set.

    Suites are never edited: adding a suite under an existing name with different cases makes the
    next version, and results name the version they used. Only forgetting feedback removes the cases of
    a synthesized reference set written with it in context (`provenance["seeds"]`, see adapterctl.erasure).
    """

    __tablename__ = "eval_suites"

    id: Mapped[int] = mapped_column(primary_key=True)
    line_id: Mapped[int] = mapped_column(ForeignKey("lines.id", ondelete="RESTRICT"))
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int]
    kind: Mapped[str] = mapped_column(String(16))  # "regression" | "reference"
    cases: Mapped[list[Any]]  # [{prompt: [messages], expected, match}] or [{text}] for a reference set
    content_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    provenance: Mapped[dict[str, Any] | None]
    """How the cases were made when adapterctl made them (rehearsal.synthesize); None: given by a person."""

    line: Mapped[Line] = relationship()

    __table_args__ = (UniqueConstraint("line_id", "name", "version", name="uq_eval_suites_line_name_version"),)


class Evaluation(Base):
    """One evaluation of a line's models on the same cases: after training (of a candidate) or on demand."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(primary_key=True)
    line_id: Mapped[int] = mapped_column(ForeignKey("lines.id", ondelete="RESTRICT"))
    adapter_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id", ondelete="RESTRICT"))  # the subject
    trigger: Mapped[str] = mapped_column(String(16))  # "candidate" | "regression"
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    seconds: Mapped[float] = mapped_column(Float)
    settings: Mapped[dict[str, Any]]  # decoding settings and the suite versions used
    gate: Mapped[dict[str, Any] | None]  # {passed, reasons, thresholds} for a candidate
    samples: Mapped[list[Any]]  # side-by-side generations on held-out prompts
    summary_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the canonical results; reviewers' decisions cite it

    line: Mapped[Line] = relationship()
    results: Mapped[list[EvalResult]] = relationship(order_by="EvalResult.position", cascade="all, delete-orphan")

    __table_args__ = (Index("ix_evaluations_line_created", "line_id", "created_at"), Index("ix_evaluations_adapter", "adapter_id"))


class EvalResult(Base):
    """The metrics of one model (base, active version or candidate) in one evaluation."""

    __tablename__ = "eval_results"

    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), primary_key=True)  # "base" | "active" | "candidate"
    position: Mapped[int]
    adapter_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id", ondelete="RESTRICT"))
    metrics: Mapped[dict[str, Any]]  # heldout loss/exact match, suite scores, reference loss
    seconds: Mapped[float] = mapped_column(Float)


class Reviewer(Base):
    """A person allowed to approve or reject candidates; admins also manage reviewers."""

    __tablename__ = "reviewers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # "reviewer" | "admin"
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))


class ReviewDecision(Base):
    """One reviewer's approval or rejection of one candidate, with the evaluation it was made on."""

    __tablename__ = "review_decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="RESTRICT"))
    reviewer: Mapped[str] = mapped_column(String(128))
    decision: Mapped[str] = mapped_column(String(16))  # "approve" | "reject"
    note: Mapped[str | None] = mapped_column(Text)
    eval_summary_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("adapter_id", "reviewer", name="uq_review_decisions_adapter_reviewer"),)


class Activation(Base):
    """From this row's time on, the line serves this adapter (None: the bare base model). Never edited."""

    __tablename__ = "activations"

    id: Mapped[int] = mapped_column(primary_key=True)
    line_id: Mapped[int] = mapped_column(ForeignKey("lines.id", ondelete="RESTRICT"))
    adapter_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id", ondelete="RESTRICT"))
    kind: Mapped[str] = mapped_column(String(16))  # see adapterctl.activations.KINDS
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))

    canary_adapter_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id", ondelete="RESTRICT"))
    """A canary: this version answers `canary_share` of the line's end users, the adapter above the rest."""
    canary_share: Mapped[float | None] = mapped_column(Float)

    adapter: Mapped[Adapter | None] = relationship(foreign_keys=[adapter_id])
    canary_adapter: Mapped[Adapter | None] = relationship(foreign_keys=[canary_adapter_id])

    __table_args__ = (Index("ix_activations_line_id", "line_id", "id"),)


class ApiToken(Base):
    """A bearer token for the HTTP server; only its sha256 is stored, the token is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None] = mapped_column(String(128))
    scope: Mapped[str] = mapped_column(String(16))  # "generate" | "feedback" | "admin"
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]  # None: never expires


class Quarantine(Base):
    """A feedback source kept out of training (on one line, or on every line) until released."""

    __tablename__ = "quarantines"

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(256), index=True)
    line_id: Mapped[int | None] = mapped_column(ForeignKey("lines.id", ondelete="RESTRICT"))  # None: every line
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    released_at: Mapped[datetime | None]
    released_by: Mapped[str | None] = mapped_column(String(128))


class IssuedResponse(Base):
    """A chat completion a server answered, kept so that feedback can name it by id on any server.

    Kept for `responses_retention_days`; forgetting feedback on it deletes it.
    """

    __tablename__ = "issued_responses"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # chatcmpl-<hex>, as the client saw it
    line_id: Mapped[int] = mapped_column(ForeignKey("lines.id", ondelete="RESTRICT"))
    adapter_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id", ondelete="RESTRICT"))  # None: the base model
    served_by: Mapped[str] = mapped_column(String(64))  # line@vN or line@base
    prompt: Mapped[str] = mapped_column(Text)  # the chat messages as canonical JSON text
    prompt_hash: Mapped[str] = mapped_column(String(64))  # sha256 of `prompt`, exactly as stored
    answers: Mapped[str] = mapped_column(Text)  # JSON list of the answers' texts, one per choice
    user: Mapped[str | None] = mapped_column(String(256))  # the request's `user` field (OpenAI's end-user id)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    canary_id: Mapped[int | None]  # the activation that started the canary this request was routed by
    arm: Mapped[str | None] = mapped_column(String(8))  # "baseline" | "canary", with canary_id
    latency_ms: Mapped[float | None] = mapped_column(Float)  # from the request to the whole answer
    error: Mapped[str | None] = mapped_column(Text)  # the generation failed (a server error): no answer, no feedback
    rating: Mapped[float | None] = mapped_column(Float)  # of the latest feedback given on it through a server
    corrected: Mapped[bool | None]  # that feedback carried a correction

    __table_args__ = (Index("ix_issued_responses_canary_id", "canary_id", "arm"),)
