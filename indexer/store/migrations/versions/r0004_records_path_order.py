"""An index walking a storage's records by path in code point order, on PostgreSQL.

The export reads records a page at a time, by path as Python sorts it (``COLLATE "C"``);
PostgreSQL's primary key follows the database's collation, so without this index each page
would sort the storage's records again. SQLite's primary key is in that order already: nothing
changes there.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the index (PostgreSQL only)."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute('CREATE INDEX IF NOT EXISTS ix_records_storage_path_c ON records (storage_id, path COLLATE "C")')


def downgrade() -> None:
    """Drop it."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_records_storage_path_c")
