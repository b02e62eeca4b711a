"""initial schema: base models, lines, feedback, audit events

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)
ACTIVE_ONLY = sa.text("status = 'active'")


def upgrade() -> None:
    op.create_table(
        "base_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("source", sa.String(1024), nullable=False),
        sa.Column("source_kind", sa.String(16), nullable=False),
        sa.Column("revision", sa.String(64), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("architecture", sa.String(128), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_base_models")),
        sa.UniqueConstraint("name", name=op.f("uq_base_models_name")),
    )
    op.create_table(
        "lines",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("base_model_id", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.ForeignKeyConstraint(
            ["base_model_id"], ["base_models.id"], name=op.f("fk_lines_base_model_id_base_models"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lines")),
        sa.UniqueConstraint("name", name=op.f("uq_lines_name")),
    )
    op.create_table(
        "feedback",
        sa.Column("id", BigId, nullable=False),
        sa.Column("line_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("times_seen", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.JSON(), nullable=True),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("rating", sa.Float(), nullable=True),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("chosen", sa.Text(), nullable=True),
        sa.Column("rejected", sa.Text(), nullable=True),
        sa.Column("source", sa.String(256), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=True),
        sa.Column("adapter_version", sa.String(64), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("logged_by", sa.String(128), nullable=False),
        sa.Column("forgotten_at", Timestamp, nullable=True),
        sa.Column("forgotten_by", sa.String(128), nullable=True),
        sa.Column("forget_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["line_id"], ["lines.id"], name=op.f("fk_feedback_line_id_lines"), ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
    )
    with op.batch_alter_table("feedback") as batch_op:
        batch_op.create_index("ix_feedback_line_status_created", ["line_id", "status", "created_at"])
        batch_op.create_index("ix_feedback_source", ["source"])
        batch_op.create_index("ix_feedback_content_hash", ["content_hash"])
        batch_op.create_index(
            "uq_feedback_line_hash_active",
            ["line_id", "content_hash"],
            unique=True,
            sqlite_where=ACTIVE_ONLY,
            postgresql_where=ACTIVE_ONLY,
        )
    op.create_table(
        "audit_events",
        sa.Column("seq", BigId, autoincrement=False, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_events")),
        sa.UniqueConstraint("hash", name=op.f("uq_audit_events_hash")),
    )
    with op.batch_alter_table("audit_events") as batch_op:
        batch_op.create_index("ix_audit_events_subject", ["subject"])
        batch_op.create_index("ix_audit_events_action", ["action"])


def downgrade() -> None:
    op.drop_table("audit_events")
    op.drop_table("feedback")
    op.drop_table("lines")
    op.drop_table("base_models")
