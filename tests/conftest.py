"""Shared fixtures: real rasters written with rasterio, a state store, real servers."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from sqlalchemy import Engine

from indexer.sample import SampleSpec, make_sample_livrable, write_dalle
from indexer.storages import access
from indexer.store.engine import create_store
from tests.servers.servers import Nginx

pytest_plugins = ["tests.servers.api_fixtures"]
"""Fixture modules every test may use by name (``api_server``)."""

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
"""The property tests draw the same examples on every run (a landing never depends on luck);
`HYPOTHESIS_PROFILE=explore` draws new ones on each run."""

SMALL = SampleSpec(cols=4, rows=4, pixels=200, resolution_m=1.0, hole=(1, 1))
"""A 4×4 grid of 200 m dalles (200 px at 1 m) with one hole, plus the bad files."""


@pytest.fixture
def make_dalle(tmp_path: Path) -> Callable[..., Path]:
    """Write one dalle under the test's folder; see `indexer.sample.write_dalle` for options."""

    def make(name: str = "a.tif", origin: tuple[float, float] = (700000.0, 6600200.0), **kwargs: object) -> Path:
        return write_dalle(tmp_path / "livrable" / name, origin, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def sample_livrable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small sample livrable, written once per session. Tests must not modify it."""
    root = tmp_path_factory.mktemp("sample") / "livrable"
    make_sample_livrable(root, SMALL)
    return root


@pytest.fixture
def livrable_copy(sample_livrable: Path, tmp_path: Path) -> Path:
    """A private copy of the sample livrable that a test may change."""
    return Path(shutil.copytree(sample_livrable, tmp_path / "livrable"))


@pytest.fixture
def no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process's secrets forgotten for the test (others' short ones, e.g. moto's ``key``, would be scrubbed too)."""
    monkeypatch.setattr(access, "_known", {})
    monkeypatch.setattr(access, "_secrets", ())


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    """A fresh SQLite state store."""
    return create_store(f"sqlite:///{tmp_path / 'state.sqlite'}")


@pytest.fixture
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Path], Nginx]]:
    """Start nginx with autoindex on a folder; stopped at the end of the test."""
    started: list[Nginx] = []

    def start(root: Path) -> Nginx:
        server = Nginx(root, tmp_path_factory.mktemp("nginx")).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
