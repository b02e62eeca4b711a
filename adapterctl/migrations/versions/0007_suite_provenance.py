"""suites record where their cases came from (a reference set synthesized from the base model)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL: cases an operator added (every suite before this revision).
    with op.batch_alter_table("eval_suites") as batch_op:
        batch_op.add_column(sa.Column("provenance", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("eval_suites") as batch_op:
        batch_op.drop_column("provenance")
