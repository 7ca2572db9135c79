"""Alembic environment of the state store.

`indexer.store.engine.migrate` runs the migrations on a connection it hands over in
``config.attributes["connection"]``; ``alembic -x url=…`` style use is not needed.
"""

from __future__ import annotations

from alembic import context

from indexer.store.schema import metadata


def run_migrations() -> None:
    """Apply the migrations on the connection given by `indexer.store.engine.migrate`."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run the migrations with `pcrs-indexer db upgrade` (indexer.store.engine.migrate)")
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
