"""Livrables and storages in the store: several livrables per storage, a livrable moving, unpublish,
credentials kept only encrypted, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from click.testing import CliRunner
from sqlalchemy import Engine, MetaData, Table, create_engine, select

from indexer.cli import main
from indexer.errors import ConfigError
from indexer.export import export_all
from indexer.pipeline import ScanOptions
from indexer.projet import Projet
from indexer.sample import write_dalle
from indexer.secrets import NO_KEY, SecretBox, new_key
from indexer.service import queueing, stages
from indexer.settings import get_settings
from indexer.storages import open_storage
from indexer.store import queries, schema
from indexer.store.engine import HEAD, create_store, schema_revision
from tests.servers.service_fixtures import (  # noqa: F401 - fixtures
    PostgresServer,
    pg_url_fixture,
    postgres_server_fixture,
)
from tests.unit.test_cli import PROJET

pytestmark = pytest.mark.servers

TODAY = date(2026, 1, 15)
KEY = new_key()
PASSWORD = "ftp-Hidden-6072"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'state.sqlite'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = create_store(url)
    yield engine
    engine.dispose()


def storage_url(source: str) -> str:
    with open_storage(source) as storage:
        return storage.url


def projet(projet_id: str, *livrables: tuple[str, str]) -> Projet:
    """A projet whose livrables (nom, url) are each stored at a URL."""
    doc: dict[str, Any] = json.loads(json.dumps(PROJET))
    template = doc["livrables"][0]
    doc["_id"] = projet_id
    doc["livrables"] = [{**template, "nom": nom, "stockage_params": {"url": url}} for nom, url in livrables]
    return Projet.from_document(doc)


def livrable_folder(root: Path, count: int, x0: float = 651000.0) -> Path:
    for i in range(count):
        write_dalle(root / f"d{i}.tif", (x0 + i * 200, 6862000.0), pixels=16, resolution_m=12.5)
    return root


def scan(engine: Engine, scan_id: int, out: Path) -> stages.Published:
    """Every stage of a queued scan, as workers run them."""
    target = queries.scan_target(engine, scan_id)
    assert target is not None
    source = target.source(SecretBox(KEY))
    assert source is not None
    with open_storage(source) as storage:
        plan = stages.list_scan(engine, storage, target, 50)
        assert plan is not None
        for chunk in range(plan.chunks):
            stages.read_chunk(engine, storage, target, chunk, ScanOptions(concurrency=2))
        published = stages.finalize_scan(engine, storage, target, out, TODAY)
    assert published is not None
    return published


def exported(engine: Engine, out: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(idPCRS, chemin) of each dalle and (initiative, nom) of each livrable of the export."""
    export_all(engine, out)
    dalles = json.loads((out / "dalles.geojson").read_text())["features"]
    livrables = json.loads((out / "livrables.geojson").read_text())["features"]
    return ([(f["properties"]["idPCRS"], f["properties"]["chemin"]) for f in dalles],
            [(f["properties"]["initiative"], f["properties"]["nom"]) for f in livrables])


def test_two_projets_share_a_storage(store: Engine, tmp_path: Path) -> None:
    root = livrable_folder(tmp_path / "commun", 2)
    (first,) = queueing.publish(store, projet("p-dep", ("Ortho départementale", str(root))), None, storage_url)
    (second,) = queueing.publish(store, projet("p-com", ("Ortho communale", str(root))), None, storage_url)
    assert (first.storage, first.scan, second.storage, second.scan) == (1, 1, 1, None)  # one scan at a time
    assert [r.livrables for r in queries.storage_rows(store)] == [("Ortho communale", "Ortho départementale")]
    scan(store, 1, tmp_path / "outputs" / "1")
    dalles, livrables = exported(store, tmp_path / "export")
    assert livrables == [("p-dep", "Ortho départementale"), ("p-com", "Ortho communale")]
    assert dalles == [("p-dep", "d0.tif"), ("p-dep", "d1.tif"), ("p-com", "d0.tif"), ("p-com", "d1.tif")]


def test_a_livrable_published_at_a_new_url_moves_there(store: Engine, tmp_path: Path) -> None:
    old = livrable_folder(tmp_path / "ancien", 2)
    new = livrable_folder(tmp_path / "nouveau", 3, x0=700000.0)
    (q1,) = queueing.publish(store, projet("p1", ("Ortho", str(old))), None, storage_url)
    scan(store, q1.scan or 0, tmp_path / "outputs" / "1")
    (q2,) = queueing.publish(store, projet("p1", ("Ortho", str(new))), None, storage_url)
    assert (q1.storage, q2.storage) == (1, 2)
    assert exported(store, tmp_path / "export-between") == ([], [])  # not exported until its new storage is scanned
    scan(store, q2.scan or 0, tmp_path / "outputs" / "2")
    dalles, livrables = exported(store, tmp_path / "export")
    assert (dalles, livrables) == ([("p1", "d0.tif"), ("p1", "d1.tif"), ("p1", "d2.tif")], [("p1", "Ortho")])
    assert queries.due_storages(store, datetime.now(UTC) + timedelta(days=30), 10) == [2]  # the old one is left
    assert [(r.id, r.livrables) for r in queries.storage_rows(store)] == [(1, ()), (2, ("Ortho",))]


def test_unpublish_removes_a_livrable_from_the_export(store: Engine, tmp_path: Path) -> None:
    root = livrable_folder(tmp_path / "commun", 1)
    queued = queueing.publish(store, projet("p1", ("A", str(root)), ("B", str(root) + "/")), None, storage_url)
    assert [(q.livrable, q.storage, q.scan) for q in queued] == [("A", 1, 1), ("B", 1, None)]
    scan(store, 1, tmp_path / "outputs" / "1")
    url = store.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(main, ["unpublish", "p1", "A", "--db", url])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"unpublished": {"projet": "p1", "livrable": "A", "storage": 1}}
    assert exported(store, tmp_path / "export") == ([("p1", "d0.tif")], [("p1", "B")])
    again = CliRunner().invoke(main, ["unpublish", "p1", "A", "--db", url])
    assert again.exit_code == 4
    assert again.stderr == "pcrs-indexer: error: livrable 'A' of projet 'p1' is not published\n"


def store_text(engine: Engine) -> str:
    """Every value of every table of the store, as text."""
    with engine.connect() as conn:
        return "\n".join(str(row) for table in schema.metadata.sorted_tables for row in conn.execute(select(table)))


def ftp_projet() -> Projet:
    doc: dict[str, Any] = json.loads(json.dumps(PROJET))
    doc["livrables"][0].update(stockage="ftp", stockage_public=False, stockage_params={
        "host": "ftp.example.fr", "username": "ortho", "password": PASSWORD, "startPath": "/pcrs"})
    doc["livrables"].append({**doc["livrables"][0], "nom": "Autre", "stockage_params": {
        "host": "ftp2.example.fr", "username": "u2", "password": "Other-Secret-11"}})
    return Projet.from_document(doc)


def test_credentials_are_stored_only_encrypted(store: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    queued = queueing.publish(store, ftp_projet(), "Ortho 2025", storage_url, box=SecretBox(KEY))
    assert [(q.url, q.scan) for q in queued] == [("ftp://ortho:***@ftp.example.fr/pcrs", 1)]
    text = store_text(store)
    for secret in (PASSWORD, "Other-Secret-11", "stockage_params"):
        assert secret not in text
    target = queries.scan_target(store, 1)
    assert target is not None and target.clear is None and target.sealed is not None
    assert target.source(SecretBox(KEY)) == f"ftp://ortho:{PASSWORD}@ftp.example.fr/pcrs"
    # A store without the key still lists its storages, saying a scan needs the key.
    assert [(r.id, r.url, r.sealed) for r in queries.storage_rows(store)] == [
        (1, "ftp://ortho:***@ftp.example.fr/pcrs", True)]
    monkeypatch.delenv("PCRS_INDEXER_SECRET_KEY", raising=False)
    get_settings.cache_clear()
    listed = CliRunner().invoke(main, ["storages", "--json", "--db", store.url.render_as_string(hide_password=False)])
    get_settings.cache_clear()
    assert listed.exit_code == 0, listed.output
    assert listed.stderr == ("pcrs-indexer: storage 1: credentials kept encrypted: a scan needs "
                             "PCRS_INDEXER_SECRET_KEY\n")
    assert json.loads(listed.stdout)["credentials"] is True
    with pytest.raises(ConfigError, match="^PCRS_INDEXER_SECRET_KEY is not set"):
        target.source(SecretBox(None))
    with pytest.raises(ConfigError, match="do not open with PCRS_INDEXER_SECRET_KEY"):
        target.source(SecretBox(new_key()))
    assert target.source(SecretBox(f"{new_key()},{KEY}")) == f"ftp://ortho:{PASSWORD}@ftp.example.fr/pcrs"


def test_without_a_key_credentials_are_refused(store: Engine, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        queueing.publish(store, ftp_projet(), None, storage_url, box=SecretBox(None))
    assert str(refused.value) == (f"projet 'PCRS Métropole Test' not published, nothing queued: "
                                  f"livrable 'Ortho 2025': {NO_KEY}; livrable 'Autre': {NO_KEY}")
    assert queries.storage_rows(store) == []
    result = CliRunner().invoke(main, ["db", "new-key"])
    assert SecretBox(result.stdout.strip()).ready


def sa_inspect_columns(engine: Engine, table: str) -> list[Any]:
    return list(Table(table, MetaData(), autoload_with=engine).columns)


def old_store(url: str) -> Engine:
    """A store at revision 0002 holding a livrable published with its password in clear."""
    engine = create_engine(url)
    config = Config()
    config.set_main_option("script_location", "indexer.store:migrations")
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0002")
        conn.exec_driver_sql("INSERT INTO storages (id, url, status, dalles, skipped) VALUES "
                             "(1, 'ftp://ortho:***@ftp.example.fr/pcrs', 'ok', 0, 0), "
                             "(2, 'https://h.example.fr/o/', 'ok', 0, 0)")
        doc = json.dumps(ftp_projet().model_dump(mode="json"))
        at = "2026-01-01 00:00:00.000000"
        conn.exec_driver_sql(
            "INSERT INTO livrables (storage_id, source, nom, projet_id, projet, published_at) VALUES "
            f"(1, 'ftp://ortho:{PASSWORD}@ftp.example.fr/pcrs', 'Ortho 2025', 'p1', '{doc}', '{at}'), "
            f"(2, 'https://h.example.fr/o/', 'Autre', NULL, '{doc}', '{at}')")
    return engine


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_upgrade_seals_the_credentials_it_finds(kind: str, request: pytest.FixtureRequest, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite'}" if kind == "sqlite" else request.getfixturevalue("pg_url")
    engine = old_store(url)
    try:
        monkeypatch.delenv("PCRS_INDEXER_SECRET_KEY", raising=False)
        get_settings.cache_clear()
        with pytest.raises(ConfigError, match="^PCRS_INDEXER_SECRET_KEY is not set"):
            create_store(url)  # as a worker or a command opens it
        assert schema_revision(engine) == "0002"  # nothing changed
        assert "secret" not in {c.name for c in sa_inspect_columns(engine, "storages")}
        monkeypatch.setenv("PCRS_INDEXER_SECRET_KEY", KEY)
        get_settings.cache_clear()
        create_store(url).dispose()
        assert schema_revision(engine) == HEAD
        assert PASSWORD not in store_text(engine) and "stockage_params" not in store_text(engine)
        with engine.connect() as conn:
            (_, sealed), second = conn.execute(select(schema.storages.c.source, schema.storages.c.secret)
                                               .order_by(schema.storages.c.id)).all()
        assert SecretBox(KEY).open(sealed) == f"ftp://ortho:{PASSWORD}@ftp.example.fr/pcrs"
        assert tuple(second) == ("https://h.example.fr/o/", None)
        with engine.connect() as conn:
            rows = conn.execute(select(schema.livrables.c.storage_id, schema.livrables.c.projet_id,
                                       schema.livrables.c.nom).order_by(schema.livrables.c.id)).all()
        assert [tuple(r) for r in rows] == [(1, "p1", "Ortho 2025"), (2, "PCRS Métropole Test", "Autre")]
    finally:
        get_settings.cache_clear()
        engine.dispose()


def test_a_storage_shared_with_a_private_livrable_publishes_its_report_without_source(store: Engine,
                                                                                       tmp_path: Path) -> None:
    root = livrable_folder(tmp_path / "commun", 1)
    queueing.publish(store, projet("p-pub", ("Public", str(root))), None, storage_url)
    private = projet("p-priv", ("Privé", str(root)))
    private = private.model_copy(update={"livrables": [private.livrables[0].model_copy(
        update={"stockage_public": False})]})
    queueing.publish(store, private, None, storage_url)
    published = scan(store, 1, tmp_path / "outputs")
    report = json.loads((published.out / "report.json").read_text())
    assert (report["source"], report["indexed"]) == (None, 1)
    assert json.loads((published.out / "livrables.geojson").read_text())["features"][0]["properties"]["nom"] == "Privé"
    assert exported(store, tmp_path / "export")[1] == [("p-pub", "Public"), ("p-priv", "Privé")]
