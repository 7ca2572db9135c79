"""Publication input as the PCRS site really sends it: validated whole, queued all or nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from indexer.cli import main
from indexer.errors import ConfigError
from indexer.projet import Livrable, Projet, livrable_source
from indexer.service import queueing
from indexer.storages import open_storage
from indexer.store import schema
from tests.unit.test_cli import PROJET


def storage_url(source: str) -> str:
    with open_storage(source) as storage:
        return storage.url


def document(*livrables: dict[str, Any], **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(PROJET))
    doc["livrables"] = list(livrables)
    doc.update(fields)
    return doc


def ftp(nom: str, **params: Any) -> dict[str, Any]:
    return {"nom": nom, "nature": "geotiff", "licence": "ouvert_lo", "stockage": "ftp", "stockage_public": True,
            "stockage_params": {"host": "ftp.example.fr", "startPath": "/ortho", **params}}


def counts(engine: Engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        return tuple(conn.execute(select(func.count()).select_from(t)).scalar_one()  # type: ignore[return-value]
                     for t in (schema.storages, schema.scans, schema.livrables))


def test_null_lists_of_the_site_are_empty() -> None:
    projet = Projet.from_document(document(ftp("a"), subventions=None, acteurs=None, etapes=None))
    assert (projet.subventions, projet.acteurs, projet.etapes, len(projet.livrables)) == ([], [], [], 1)
    assert Projet.from_document({"_id": "x", "livrables": None}).livrables == []


@pytest.mark.parametrize(("params", "source"), [
    ({"host": "ftp://127.0.0.1"}, "ftp://127.0.0.1/ortho"),
    ({"host": "ftp://Ftp.Example.fr:2121/"}, "ftp://ftp.example.fr:2121/ortho"),
    ({"host": "ftps://ftp.example.fr", "port": "990"}, "ftps://ftp.example.fr:990/ortho"),
    ({"host": "ftp.example.fr", "port": 21, "secure": "1"}, "ftps://ftp.example.fr:21/ortho"),
    ({"host": "ftp://[::1]:2121"}, "ftp://[::1]:2121/ortho"),
    ({"host": "::1", "port": ""}, "ftp://[::1]/ortho"),
])
def test_a_host_written_as_a_url_of_its_kind_is_taken(params: dict[str, Any], source: str) -> None:
    assert livrable_source(Livrable.model_validate(ftp("a", **params))) == source


@pytest.mark.parametrize(("params", "message"), [
    ({"host": "http://ftp.example.fr"}, "livrable 'a': host 'http://ftp.example.fr' is a http:// URL, not a "
                                        "stockage ftp host (ftp://, ftps:// or a bare host name)"),
    ({"host": "ftp://u:secret@h"}, "livrable 'a': host 'ftp://u:***@h' must name only a server (user, password "
                                   "and folder go in username, password and startPath)"),
    ({"host": "ftp://u:pw@[bad"}, "livrable 'a': host 'ftp://u:***@[bad' is not a valid URL (Invalid IPv6 URL)"),
    ({"host": "ftp://h/ortho"}, "livrable 'a': host 'ftp://h/ortho' must name only a server"),
    ({"host": "ftp://h:21", "port": 2121}, "livrable 'a': host 'ftp://h:21' and port 2121 disagree"),
    ({"host": "ftp://h:x"}, "livrable 'a': host 'ftp://h:x' is not a valid URL (Port could not be cast"),
    ({"port": "vingt"}, "livrable 'a': port 'vingt' is not a port number (1 to 65535)"),
    ({"port": 70000}, "livrable 'a': port 70000 is not a port number"),
    ({"host": "ftp.example.fr/ortho"}, "livrable 'a': host 'ftp.example.fr/ortho' is not a host name"),
    ({"host": ""}, "livrable 'a': stockage ftp without host"),
])
def test_a_host_that_makes_no_url_is_refused_with_one_line(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        livrable_source(Livrable.model_validate(ftp("a", **params)))
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value) and "secret" not in str(raised.value) and "pw" not in str(raised.value)


def test_one_bad_livrable_refuses_the_whole_projet_and_queues_nothing(engine: Engine, tmp_path: Path) -> None:
    doc = document(ftp("premier"), ftp("second", host="ftp://[bad"), ftp("troisième", port="x"), subventions=None)
    with pytest.raises(ConfigError) as raised:
        queueing.publish(engine, Projet.from_document(doc), None, storage_url)
    assert str(raised.value) == (
        "projet 'PCRS Métropole Test' not published, nothing queued: livrable 'second': host 'ftp://[bad' "
        "is not a valid URL (Invalid IPv6 URL); livrable 'troisième': port 'x' is not a port number (1 to 65535)")
    assert counts(engine) == (0, 0, 0)
    # The same through the command: one line, exit 2, nothing in the store.
    (tmp_path / "projet.json").write_text(json.dumps(doc), encoding="utf-8")
    db = f"sqlite:///{tmp_path / 'state.sqlite'}"
    result = CliRunner().invoke(main, ["publish", str(tmp_path / "projet.json"), "--db", db])
    assert result.exit_code == 2
    assert result.stderr == f"pcrs-indexer: error: {raised.value}\n"
    assert result.stdout == ""


def test_livrables_without_dalles_are_skipped_with_the_reason(engine: Engine, tmp_path: Path) -> None:
    root = tmp_path / "ortho"
    root.mkdir()
    doc = document(
        {**ftp("Ortho"), "stockage": "http", "stockage_params": {"url": root.as_uri()}},
        {**ftp("Externe"), "stockage": "http", "stockage_params": {"url_externe": "https://geo.example.fr/ortho"}},
        {**ftp("Vecteur"), "nature": "gml"},
        {**ftp("Plan"), "nature": "dwg"},
        {**ftp("Papier"), "stockage": None, "stockage_params": None},
    )
    queued = queueing.publish(engine, Projet.from_document(doc), None, storage_url)
    assert queueing.publish_summary(queued) == {
        "queued": [{"storage": 1, "scan": 1, "url": root.as_uri(), "livrable": "Ortho"}],
        "refused": [],
        "skipped": [
            {"livrable": "Externe", "reason": "its stockage is external (url_externe only): it cannot be scanned"},
            {"livrable": "Vecteur", "reason": "nature 'gml' is vector data, not dalles"},
            {"livrable": "Plan", "reason": "nature 'dwg' is vector data, not dalles"},
            {"livrable": "Papier", "reason": "no stockage"}]}
    assert counts(engine) == (1, 1, 1)


def test_a_private_livrable_without_its_params_says_how_to_get_them(engine: Engine) -> None:
    doc = document({**ftp("Privé"), "stockage_public": False, "stockage_params": None})
    with pytest.raises(ConfigError, match=r"livrable 'Privé': no stockage_params: the site leaves them out of a "
                                          r"private stockage \(stockage_public false\) unless asked with a token "
                                          r"\(PCRS_INDEXER_PROJET_API_TOKEN\)"):
        queueing.publish(engine, Projet.from_document(doc), None, storage_url)
    assert counts(engine) == (0, 0, 0)


def test_the_command_says_which_livrables_it_skipped(tmp_path: Path) -> None:
    doc = document({**ftp("Vecteur"), "nature": "gpkg"},
                   {**ftp("Externe"), "stockage": "http", "stockage_params": {"url_externe": "https://x.test/o"}})
    (tmp_path / "projet.json").write_text(json.dumps(doc), encoding="utf-8")
    result = CliRunner().invoke(main, ["publish", str(tmp_path / "projet.json"), "--db",
                                       f"sqlite:///{tmp_path / 'state.sqlite'}"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "livrable 'Vecteur' skipped: nature 'gpkg' is vector data, not dalles",
        "livrable 'Externe' skipped: its stockage is external (url_externe only): it cannot be scanned"]
    assert json.loads(result.stdout) == {"queued": [], "refused": [], "skipped": [
        {"livrable": "Vecteur", "reason": "nature 'gpkg' is vector data, not dalles"},
        {"livrable": "Externe", "reason": "its stockage is external (url_externe only): it cannot be scanned"}]}
