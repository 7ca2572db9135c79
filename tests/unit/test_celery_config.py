"""The service's Celery settings live in the package; a module named by the environment overrides them."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.errors import ConfigError
from indexer.settings import get_fleet_settings
from tasks.app import create_app


@pytest.fixture(autouse=True)
def fresh_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setenv("PCRS_INDEXER_DATA_DIR", str(tmp_path / "data"))
    get_fleet_settings.cache_clear()
    yield None
    get_fleet_settings.cache_clear()


def test_without_an_override_the_package_defaults_apply() -> None:
    app = create_app()
    assert (app.conf.task_serializer, app.conf.task_acks_late, app.conf.worker_prefetch_multiplier) == (
        "json", True, 1)
    assert sorted(app.conf.beat_schedule) == ["reindex-due-storages", "requeue-stalled-scans"]


def test_an_override_module_replaces_only_what_it_defines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    override = tmp_path / "override.py"
    override.write_text("import os\n\nworker_prefetch_multiplier = 4\n_helper = 'not a setting'\n")
    monkeypatch.setenv("PCRS_INDEXER_CELERY_CONFIG", str(override))
    app = create_app()
    assert (app.conf.worker_prefetch_multiplier, app.conf.task_acks_late) == (4, True)
    assert "_helper" not in app.conf and "os" not in app.conf


def test_the_shipped_override_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = dict(create_app().conf.items())
    shipped = Path(__file__).parents[2] / "config" / "celeryconfig.py"
    monkeypatch.setenv("PCRS_INDEXER_CELERY_CONFIG", str(shipped))
    get_fleet_settings.cache_clear()
    app = create_app()
    assert get_fleet_settings().celery_config == shipped
    assert dict(app.conf.items()) == defaults


def test_a_missing_override_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PCRS_INDEXER_CELERY_CONFIG", str(tmp_path / "absent.py"))
    with pytest.raises(ConfigError, match="absent.py not found"):
        create_app()
