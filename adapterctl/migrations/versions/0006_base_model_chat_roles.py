"""base models record the message roles their chat template renders

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL for models registered before: not known, so feedback may use every role, as before.
    with op.batch_alter_table("base_models") as batch_op:
        batch_op.add_column(sa.Column("chat_roles", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("base_models") as batch_op:
        batch_op.drop_column("chat_roles")
