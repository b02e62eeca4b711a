"""issued responses: what servers answered, so feedback on a response id works on any server and after a restart

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "issued_responses",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("line_id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=True),
        sa.Column("served_by", sa.String(64), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("prompt_hash", sa.String(64), nullable=False),
        sa.Column("answers", sa.Text(), nullable=False),
        sa.Column("user", sa.String(256), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["line_id"], ["lines.id"], name=op.f("fk_issued_responses_line_id_lines"), ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"], name=op.f("fk_issued_responses_adapter_id_adapters"), ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_issued_responses")),
    )
    # Retention deletes by age.
    op.create_index(op.f("ix_issued_responses_created_at"), "issued_responses", ["created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_issued_responses_created_at"), table_name="issued_responses")
    op.drop_table("issued_responses")
