"""When a livrable of a storage was last unpublished: the export's last-modified time moves with it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``storages.unpublished_at`` (a table made by this code's schema, then stamped older, has it)."""
    if "unpublished_at" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("storages")}:
        op.add_column("storages", sa.Column("unpublished_at", sa.DateTime(timezone=True),
                                            comment="when a livrable stored here was last unpublished"))


def downgrade() -> None:
    """Drop it."""
    op.drop_column("storages", "unpublished_at")
