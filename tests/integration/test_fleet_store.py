"""Fleet commands and workers open the fleet's store, never a new empty one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from indexer.store.engine import HEAD
from tests.servers.service_fixtures import REPO, VENV_BIN


def env_without_store(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCRS_INDEXER_")}
    env["PCRS_INDEXER_DATA_DIR"] = str(data_dir)
    return env


def test_fleet_commands_refuse_to_create_an_empty_store(tmp_path: Path) -> None:
    env = env_without_store(tmp_path / "data")
    for command in (["storages"], ["requeue", "--all"]):
        result = subprocess.run([str(VENV_BIN / "pcrs-indexer"), *command], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
        assert (result.returncode, result.stderr) == (
            2, "pcrs-indexer: error: no state store: set PCRS_INDEXER_DB_URL (the fleet's PostgreSQL) or --db; "
               f"the default SQLite store {tmp_path / 'data' / 'pcrs-indexer.sqlite'} does not exist\n"), command
    assert not (tmp_path / "data" / "pcrs-indexer.sqlite").exists()
    # `db upgrade` creates it, and says which store it is.
    created = subprocess.run([str(VENV_BIN / "pcrs-indexer"), "db", "upgrade"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert created.stderr == f"state store sqlite:///{tmp_path / 'data' / 'pcrs-indexer.sqlite'} at revision {HEAD}\n"
    listed = subprocess.run([str(VENV_BIN / "pcrs-indexer"), "storages", "--json"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert (listed.returncode, listed.stdout) == (0, "")


def test_a_worker_refuses_to_start_without_the_fleet_s_store(tmp_path: Path) -> None:
    env = env_without_store(tmp_path / "data")
    env["PCRS_INDEXER_BROKER_URL"] = "memory://"
    env["PCRS_INDEXER_RESULT_BACKEND"] = "cache+memory://"
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "solo", "-l", "INFO"],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "no state store: set PCRS_INDEXER_DB_URL to the fleet's PostgreSQL" in result.stderr
    assert not (tmp_path / "data" / "pcrs-indexer.sqlite").exists()
