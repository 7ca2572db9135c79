"""The export's pages on PostgreSQL: paths in code point order whatever the database's collation
(the test cluster's is ICU fr-FR), read through the index of revision 0004, never sorted again."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import Engine, event

from indexer import export
from indexer.models import FileEntry
from indexer.store import records
from indexer.store.engine import create_store
from tests.servers.service_fixtures import (  # noqa: F401 - fixtures
    PostgresServer,
    pg_url_fixture,
    postgres_server_fixture,
)
from tests.unit.test_export import PARIS, dalles, fill, projet_of, publish

pytestmark = pytest.mark.servers

NAMES = ["É.tif", "B.tif", "a.tif", "e.tif", "lot-1/x.tif", "lot/x.tif", "Z/1.tif"]


@pytest.fixture
def pg(pg_url: str) -> Iterator[Engine]:
    engine = create_store(pg_url)
    yield engine
    engine.dispose()


def test_pages_follow_code_points_on_postgresql(pg: Engine) -> None:
    fill(pg)
    mixed = [replace(d, file=FileEntry(name, 1, None))
             for d, name in zip(dalles(PARIS, len(NAMES)), NAMES, strict=True)]
    publish(pg, "http://mixed.test/", projet_of("p-mixed", "Mixte", "M"), mixed)
    for page in (1, 2, 5000):
        chemins = [f["properties"]["chemin"] for f in export.dalle_features(pg, initiative="p-mixed", page=page)]
        assert chemins == sorted(NAMES) == ["B.tif", "Z/1.tif", "a.tif", "e.tif", "lot-1/x.tif", "lot/x.tif",
                                            "É.tif"]
    assert len(list(export.dalle_features(pg, page=7))) == 12 + 12 + 5 + 1 + len(NAMES)


def test_a_page_is_an_index_range_scan_without_sort(pg: Engine) -> None:
    fill(pg)
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FROM records" in statement:
            seen.append((statement, parameters))

    event.listen(pg, "before_cursor_execute", capture)
    try:
        assert [d.path for d in records.dalles_after(pg, 1, "d1.tif", 3)] == ["d10.tif", "d11.tif", "d2.tif"]
    finally:
        event.remove(pg, "before_cursor_execute", capture)
    ((statement, parameters),) = seen
    with pg.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")  # a few rows: let the planner show its index choice
        plan = "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {statement}", parameters))
        assert "ix_records_storage_path_c" in plan and "Sort" not in plan, plan
        conn.exec_driver_sql("DROP INDEX ix_records_storage_path_c")  # without it, each page sorts the storage
        plan = "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {statement}", parameters))
        assert "Sort" in plan, plan
        conn.rollback()
