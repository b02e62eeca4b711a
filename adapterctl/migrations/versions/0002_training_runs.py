"""training runs, lineage, adapters, leases

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("line_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.Column("started_by", sa.String(128), nullable=False),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("base_model_hash", sa.String(64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("dataset", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["line_id"], ["lines.id"], name=op.f("fk_training_runs_line_id_lines"), ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
    )
    with op.batch_alter_table("training_runs") as batch_op:
        batch_op.create_index("ix_training_runs_line_status", ["line_id", "status"])
    op.create_table(
        "run_examples",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("feedback_id", BigId, nullable=False),
        sa.Column("split", sa.String(16), nullable=False),
        sa.ForeignKeyConstraint(["feedback_id"], ["feedback.id"], name=op.f("fk_run_examples_feedback_id_feedback"), ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["run_id"], ["training_runs.id"], name=op.f("fk_run_examples_run_id_training_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "feedback_id", name=op.f("pk_run_examples")),
    )
    with op.batch_alter_table("run_examples") as batch_op:
        batch_op.create_index("ix_run_examples_feedback", ["feedback_id"])
    op.create_table(
        "adapters",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("line_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("artifact_path", sa.String(512), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("status_changed_at", Timestamp, nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["line_id"], ["lines.id"], name=op.f("fk_adapters_line_id_lines"), ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["run_id"], ["training_runs.id"], name=op.f("fk_adapters_run_id_training_runs"), ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adapters")),
        sa.UniqueConstraint("line_id", "version", name="uq_adapters_line_version"),
        sa.UniqueConstraint("run_id", name=op.f("uq_adapters_run_id")),
    )
    with op.batch_alter_table("adapters") as batch_op:
        batch_op.create_index("ix_adapters_line_status", ["line_id", "status"])
    op.create_table(
        "leases",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("holder", sa.String(256), nullable=False),
        sa.Column("acquired_at", Timestamp, nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("adapters")
    op.drop_table("run_examples")
    op.drop_table("training_runs")
