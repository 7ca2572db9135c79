"""The state store of ``pcrs-indexer index``: storages, scans, CRS and one record per file.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the tables."""
    op.create_table(
        "storages",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("url", sa.Text, nullable=False, unique=True, comment="root URL, credentials masked"),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("last_success_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text),
        sa.Column("dalles", sa.Integer, nullable=False),
        sa.Column("skipped", sa.Integer, nullable=False),
    )
    op.create_table(
        "scans",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("storage_id", sa.Integer, sa.ForeignKey("storages.id", ondelete="CASCADE"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("step", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
        sa.Column("listed", sa.Integer, nullable=False),
        sa.Column("read", sa.Integer, nullable=False),
        sa.Column("reused", sa.Integer, nullable=False),
        sa.Column("skipped", sa.Integer, nullable=False),
        sa.Column("duration_s", sa.Float),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_scans_storage_id", "scans", ["storage_id"])
    op.create_table(
        "crs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("wkt", sa.Text, nullable=False, unique=True),
    )
    op.create_table(
        "records",
        sa.Column("storage_id", sa.Integer, sa.ForeignKey("storages.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("size", sa.BigInteger),
        sa.Column("mtime", sa.String(64)),
        sa.Column("etag", sa.String(256)),
        sa.Column("status", sa.String(16), nullable=False, comment="valid or skipped"),
        sa.Column("reason", sa.String(32)),
        sa.Column("detail", sa.Text),
        sa.Column("crs_id", sa.Integer, sa.ForeignKey("crs.id")),
        sa.Column("meta", sa.JSON, comment="the dalle's header metadata"),
        sa.Column("scan_id", sa.Integer, nullable=False),
        sa.UniqueConstraint("storage_id", "path", name="uq_records_storage_path"),
    )


def downgrade() -> None:
    """Drop the tables."""
    for table in ("records", "crs", "scans", "storages"):
        op.drop_table(table)
