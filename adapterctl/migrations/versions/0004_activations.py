"""activations: which version each line serves, from when, set by whom and why

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "activations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("line_id", sa.Integer(), nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"], name=op.f("fk_activations_adapter_id_adapters"), ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["line_id"], ["lines.id"], name=op.f("fk_activations_line_id_lines"), ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_activations")),
    )
    with op.batch_alter_table("activations") as batch_op:
        batch_op.create_index("ix_activations_line_id", ["line_id", "id"])


def downgrade() -> None:
    with op.batch_alter_table("activations") as batch_op:
        batch_op.drop_index("ix_activations_line_id")
    op.drop_table("activations")
