"""Several livrables per storage, keyed by (projet, nom); storage credentials kept only encrypted.

``livrables`` gets its own id and a unique (projet_id, nom); its projet document keeps only the
livrable's own entry, without stockage_params. The URL with credentials moves, encrypted with
``PCRS_INDEXER_SECRET_KEY``, to ``storages.secret``: a store holding credentials cannot be
upgraded without the key (the upgrade stops, saying so, and changes nothing).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _new_livrables() -> list[sa.Column[Any] | sa.Constraint]:
    return [
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("storage_id", sa.Integer, sa.ForeignKey("storages.id", ondelete="CASCADE"), nullable=False,
                  comment="where it is stored; several livrables may share a storage"),
        sa.Column("projet_id", sa.Text, nullable=False, comment="its projet's _id (its nom when it has none)"),
        sa.Column("nom", sa.Text, nullable=False),
        sa.Column("projet", sa.JSON, nullable=False,
                  comment="the projet document with this livrable only, without stockage_params: what outputs show"),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("feature", sa.JSON,
                  comment="its livrables.geojson feature, as of its storage's last successful scan"),
        sa.UniqueConstraint("projet_id", "nom", name="uq_livrables_projet_nom"),
    ]


def _moved(conn: sa.Connection) -> tuple[list[dict[str, Any]], dict[int, dict[str, str]]]:
    """The rows of the old ``livrables`` in the new shape, and each storage's source, sealed if need be."""
    from indexer.projet import Projet, published_document
    from indexer.settings import get_settings
    from indexer.storages.access import mask_url

    old = sa.table("livrables", sa.column("storage_id", sa.Integer), sa.column("source", sa.Text),
                   sa.column("nom", sa.Text), sa.column("projet_id", sa.Text), sa.column("projet", sa.JSON),
                   sa.column("published_at", sa.DateTime(timezone=True)), sa.column("feature", sa.JSON))
    rows, sources = [], {}
    box = get_settings().secret_box()
    for row in conn.execute(sa.select(old)).mappings():
        document = row["projet"] if isinstance(row["projet"], dict) else {}
        projet = Projet.model_validate(document)
        livrable = next((liv for liv in projet.livrables if liv.nom == row["nom"]), None)
        rows.append({"storage_id": row["storage_id"], "nom": row["nom"],
                     "projet_id": row["projet_id"] or projet.nom or f"storage {row['storage_id']}",
                     "projet": published_document(projet, livrable), "published_at": row["published_at"],
                     "feature": row["feature"]})
        if row["source"] and mask_url(row["source"]) != row["source"]:
            # A ConfigError without a key: the upgrade stops and changes nothing.
            sources[row["storage_id"]] = {"secret": box.seal(row["source"])}
        elif row["source"]:
            sources[row["storage_id"]] = {"source": row["source"]}
    return rows, sources


def upgrade() -> None:
    """Rebuild ``livrables``; move the credentials, encrypted, to ``storages.secret``."""
    conn = op.get_bind()
    inspector = sa.inspect(conn)
    rebuild = "source" in {c["name"] for c in inspector.get_columns("livrables")}
    # Everything that may fail (no key to seal a password) before anything is changed.
    rows, sources = _moved(conn) if rebuild else ([], {})
    if "secret" not in {c["name"] for c in inspector.get_columns("storages")}:
        op.add_column("storages", sa.Column("source", sa.Text, comment="the URL workers open, when it has no "
                                                                       "credential"))
        op.add_column("storages", sa.Column("secret", sa.Text, comment="the URL workers open, when it has "
                                                                       "credentials: encrypted (Fernet)"))
    if not rebuild:
        return  # created in the new shape already (a SQLite store made by create_all)
    table = op.create_table("livrables_new", *_new_livrables())
    if rows:
        op.bulk_insert(table, rows)
    storages = sa.table("storages", sa.column("id"), sa.column("source"), sa.column("secret"))
    for storage, values in sources.items():
        conn.execute(sa.update(storages).where(storages.c.id == storage).values(**values))
    op.drop_table("livrables")
    op.rename_table("livrables_new", "livrables")
    op.create_index("ix_livrables_storage_id", "livrables", ["storage_id"])


def downgrade() -> None:
    """Not supported: the credentials were only ever kept encrypted from this revision on."""
    raise NotImplementedError("revision 0003 cannot be downgraded")
