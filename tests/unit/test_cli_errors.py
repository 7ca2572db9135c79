"""Every command answers bad input with one line on stderr and its exit code; ``-v`` adds the traceback."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, text

from indexer.cli import TerminalFormatter, main

PG_DOWN = "postgresql+psycopg://pcrs:Pg-Secret-77@127.0.0.1:1/pcrs"
PG_REFUSED = ('state store: connection failed: connection to server at "127.0.0.1", port 1 failed: Connection '
              "refused Is the server running on that host and accepting TCP/IP connections?")


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def commands(tmp_path: Path) -> dict[str, list[str]]:
    """Every command reading the store, with valid arguments but the store's."""
    (tmp_path / "projet.json").write_text(json.dumps({"nom": "P", "livrables": []}))
    (tmp_path / "livrable").mkdir()
    return {
        "index": ["index", str(tmp_path / "livrable"), "--out", str(tmp_path / "out")],
        "publish": ["publish", str(tmp_path / "projet.json")],
        "storages": ["storages"],
        "status": ["status", "1"],
        "requeue": ["requeue", "--all"],
        "export": ["export", "--out", str(tmp_path / "export")],
        "db upgrade": ["db", "upgrade"],
    }


@pytest.mark.parametrize(("db", "code", "line"), [
    ("mysql://pcrs:My-Secret@127.0.0.1/pcrs", 2, "unsupported state store 'mysql': use SQLite or PostgreSQL"),
    ("nosuch://x", 2, "unsupported state store 'nosuch': use SQLite or PostgreSQL"),
    ("not a URL", 2, "state store: Could not parse SQLAlchemy URL from given URL string"),
    (PG_DOWN, 6, PG_REFUSED),
    ("sqlite:////etc/hostname/pcrs/state.sqlite", 2,
     "cannot create the state store's folder /etc/hostname/pcrs: /etc/hostname is not a folder"),
    ("sqlite:////sys/pcrs/state.sqlite", 2, "cannot create the state store's folder /sys/pcrs: operation not "
                                            "permitted"),
])
@pytest.mark.parametrize("command", ["index", "publish", "storages", "status", "requeue", "export", "db upgrade"])
def test_a_bad_store_is_one_line_for_every_command(commands: dict[str, list[str]], command: str, db: str, code: int,
                                                   line: str, tmp_path: Path) -> None:
    result = run(*commands[command], "--db", db)
    assert (result.exit_code, result.stderr, result.stdout) == (code, f"pcrs-indexer: error: {line}\n", "")
    assert not (tmp_path / "out").exists() and not (tmp_path / "export").exists()


def test_verbose_adds_the_traceback_without_the_password(commands: dict[str, list[str]]) -> None:
    result = run("-v", *commands["storages"], "--db", PG_DOWN)
    assert result.exit_code == 6
    assert result.stderr.startswith("ERROR indexer: failed\nTraceback (most recent call last):\n")
    assert "sqlalchemy.exc.OperationalError: (psycopg.OperationalError) connection failed" in result.stderr
    assert result.stderr.endswith(f"pcrs-indexer: error: {PG_REFUSED}\n")
    assert "Pg-Secret-77" not in result.stderr


def test_a_storage_id_too_large_for_the_store(tmp_path: Path) -> None:
    result = run("status", "100000000000000000000000", "--db", f"sqlite:///{tmp_path / 's.sqlite'}")
    assert (result.exit_code, result.stderr) == (4, "pcrs-indexer: error: no storage '100000000000000000000000' in "
                                                    "the state store: see `pcrs-indexer storages`\n")


@pytest.mark.parametrize("command", ["index", "export"])
def test_an_unwritable_output_folder_is_refused_before_any_work(command: str, commands: dict[str, list[str]],
                                                                tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    args = [a if a not in (str(tmp_path / "out"), str(tmp_path / "export")) else str(tmp_path / "file" / "out")
            for a in commands[command]]
    store = tmp_path / "s.sqlite"
    result = run(*args, "--db", f"sqlite:///{store}")
    assert (result.exit_code, result.stderr) == (
        2, f"pcrs-indexer: error: cannot write to {tmp_path / 'file' / 'out'}: {tmp_path / 'file'} is not a folder\n")
    if store.exists():  # export opened it; index must not have scanned anything
        engine = create_engine(f"sqlite:///{store}")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM scans")).scalar() == 0
        engine.dispose()


def test_log_lines_show_their_extra_fields() -> None:
    record = logging.LogRecord("indexer.storages.crawl", logging.WARNING, "", 0,
                               "folder skipped: it repeats an ancestor (a link looping back up)", None, None)
    record.storage = "ftp://u:***@h.example/livrable"
    record.folder = "lot 1/boucle/"
    assert TerminalFormatter().format(record) == (
        "WARNING indexer.storages.crawl: folder skipped: it repeats an ancestor (a link looping back up) "
        'storage=ftp://u:***@h.example/livrable folder="lot 1/boucle/"')
