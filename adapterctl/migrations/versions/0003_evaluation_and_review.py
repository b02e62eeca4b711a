"""evaluation suites, evaluations and their results, reviewers and review decisions

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "eval_suites",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("line_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("cases", sa.JSON(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.ForeignKeyConstraint(["line_id"], ["lines.id"], name=op.f("fk_eval_suites_line_id_lines"), ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_suites")),
        sa.UniqueConstraint("line_id", "name", "version", name="uq_eval_suites_line_name_version"),
    )
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("line_id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=True),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("gate", sa.JSON(), nullable=True),
        sa.Column("samples", sa.JSON(), nullable=False),
        sa.Column("summary_hash", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"], name=op.f("fk_evaluations_adapter_id_adapters"), ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["line_id"], ["lines.id"], name=op.f("fk_evaluations_line_id_lines"), ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
    )
    with op.batch_alter_table("evaluations") as batch_op:
        batch_op.create_index("ix_evaluations_line_created", ["line_id", "created_at"])
        batch_op.create_index("ix_evaluations_adapter", ["adapter_id"])
    op.create_table(
        "eval_results",
        sa.Column("evaluation_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"], name=op.f("fk_eval_results_adapter_id_adapters"), ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(
            ["evaluation_id"], ["evaluations.id"], name=op.f("fk_eval_results_evaluation_id_evaluations"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("evaluation_id", "role", name=op.f("pk_eval_results")),
    )
    op.create_table(
        "reviewers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviewers")),
        sa.UniqueConstraint("name", name=op.f("uq_reviewers_name")),
    )
    op.create_table(
        "review_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("reviewer", sa.String(128), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("eval_summary_hash", sa.String(64), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"], name=op.f("fk_review_decisions_adapter_id_adapters"), ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_decisions")),
        sa.UniqueConstraint("adapter_id", "reviewer", name="uq_review_decisions_adapter_reviewer"),
    )


def downgrade() -> None:
    op.drop_table("review_decisions")
    op.drop_table("reviewers")
    op.drop_table("eval_results")
    with op.batch_alter_table("evaluations") as batch_op:
        batch_op.drop_index("ix_evaluations_adapter")
        batch_op.drop_index("ix_evaluations_line_created")
    op.drop_table("evaluations")
    op.drop_table("eval_suites")
