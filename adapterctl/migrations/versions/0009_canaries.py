"""canaries: an activation may serve a second version to a share of the traffic; issued responses say
which side of a canary answered them, how long it took, whether it failed, and the feedback it got

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("activations") as batch_op:
        batch_op.add_column(sa.Column("canary_adapter_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("canary_share", sa.Float(), nullable=True))
        batch_op.create_foreign_key(
            op.f("fk_activations_canary_adapter_id_adapters"), "adapters", ["canary_adapter_id"], ["id"], ondelete="RESTRICT"
        )
    with op.batch_alter_table("issued_responses") as batch_op:
        batch_op.add_column(sa.Column("canary_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("arm", sa.String(8), nullable=True))
        batch_op.add_column(sa.Column("latency_ms", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("rating", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("corrected", sa.Boolean(), nullable=True))
        batch_op.create_index("ix_issued_responses_canary_id", ["canary_id", "arm"])


def downgrade() -> None:
    with op.batch_alter_table("issued_responses") as batch_op:
        batch_op.drop_index("ix_issued_responses_canary_id")
        for column in ("corrected", "rating", "error", "latency_ms", "arm", "canary_id"):
            batch_op.drop_column(column)
    with op.batch_alter_table("activations") as batch_op:
        batch_op.drop_constraint(op.f("fk_activations_canary_adapter_id_adapters"), type_="foreignkey")
        batch_op.drop_column("canary_share")
        batch_op.drop_column("canary_adapter_id")
