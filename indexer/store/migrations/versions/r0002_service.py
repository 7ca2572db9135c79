"""The distributed service: published livrables, scan jobs, listings, chunks and chunk results.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the service's tables."""
    op.create_table(
        "livrables",
        sa.Column("storage_id", sa.Integer, sa.ForeignKey("storages.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("source", sa.Text, nullable=False, comment="the URL workers open, credentials included"),
        sa.Column("nom", sa.Text, nullable=False),
        sa.Column("projet_id", sa.Text),
        sa.Column("projet", sa.JSON, nullable=False, comment="the projet document the livrable belongs to"),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("feature", sa.JSON, comment="its livrables.geojson feature, as of its last successful scan"),
    )
    op.create_table(
        "scan_jobs",
        sa.Column("scan_id", sa.Integer, sa.ForeignKey("scans.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("trigger", sa.String(16), nullable=False, comment="publish, requeue or schedule"),
        sa.Column("full", sa.Boolean, nullable=False, comment="read every dalle, ignoring change detection"),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("to_read", sa.Integer),
        sa.Column("chunks", sa.Integer),
    )
    op.create_table(
        "scan_files",
        sa.Column("scan_id", sa.Integer, sa.ForeignKey("scans.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("size", sa.BigInteger),
        sa.Column("mtime", sa.String(64)),
        sa.Column("etag", sa.String(256)),
        sa.Column("role", sa.String(8), nullable=False, comment="read, reused or sidecar"),
        sa.Column("stem", sa.Text, nullable=False,
                  comment="lower-case path without extension: joins dalles and sidecars"),
        sa.Column("chunk", sa.Integer, comment="the chunk reading it, for role read"),
    )
    op.create_index("ix_scan_files_chunk", "scan_files", ["scan_id", "chunk"])
    op.create_index("ix_scan_files_stem", "scan_files", ["scan_id", "stem"])
    op.create_table(
        "scan_chunks",
        sa.Column("scan_id", sa.Integer, sa.ForeignKey("scans.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("chunk", sa.Integer, primary_key=True),
        sa.Column("entries", sa.Integer, nullable=False),
        sa.Column("status", sa.String(8), nullable=False, comment="pending or done"),
        sa.Column("done_at", sa.DateTime(timezone=True)),
        sa.Column("done_by", sa.Text, comment="the worker that stored its results"),
    )
    op.create_table(
        "scan_results",
        sa.Column("storage_id", sa.Integer, sa.ForeignKey("storages.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("scan_id", sa.Integer, sa.ForeignKey("scans.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("size", sa.BigInteger),
        sa.Column("mtime", sa.String(64)),
        sa.Column("etag", sa.String(256)),
        sa.Column("status", sa.String(16), nullable=False, comment="valid or skipped"),
        sa.Column("reason", sa.String(32)),
        sa.Column("detail", sa.Text),
        sa.Column("crs_id", sa.Integer, sa.ForeignKey("crs.id")),
        sa.Column("meta", sa.JSON, comment="the dalle's header metadata"),
    )


def downgrade() -> None:
    """Drop the service's tables."""
    for table in ("scan_results", "scan_chunks", "scan_files", "scan_jobs", "livrables"):
        op.drop_table(table)
