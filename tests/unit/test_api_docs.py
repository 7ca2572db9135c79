"""Swagger UI of ``/docs``: pinned from npm beside Leaflet, carried by the wheel, 503 (not a blank page)
when npm did not install it."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import tomllib
from pathlib import Path

import pytest
from starlette.requests import Request

from indexer.api import app, docs, page
from indexer.errors import MapAssetsMissing

ROOT = Path(__file__).resolve().parents[2]
SERVED = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")


def test_swagger_ui_is_pinned_by_the_lock_file() -> None:
    wanted = json.loads((page.STATIC / "package.json").read_text(encoding="utf-8"))["dependencies"]
    locked = json.loads((page.STATIC / "package-lock.json").read_text(encoding="utf-8"))["packages"]
    assert wanted["swagger-ui-dist"].count(".") == 2 and wanted["swagger-ui-dist"][0].isdigit()  # one version
    assert locked["node_modules/swagger-ui-dist"]["version"] == wanted["swagger-ui-dist"]
    installed = json.loads((docs.SWAGGER_UI / "package.json").read_text(encoding="utf-8"))["version"]
    assert installed == wanted["swagger-ui-dist"]


def test_a_wheel_carries_swagger_ui() -> None:
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"]["indexer.api"]
    for name in (*SERVED, "LICENSE"):
        path = docs.SWAGGER_UI / name
        assert path.is_file()
        relative = path.relative_to(ROOT / "indexer" / "api").as_posix()
        assert any(fnmatch.fnmatchcase(relative, glob) for glob in globs), relative
    assert {f"swagger-ui/{name}" for name in SERVED} <= set(page.STATIC_FILES)


def test_without_swagger_ui_docs_and_its_files_answer_503(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(docs, "SWAGGER_UI", tmp_path / "missing")
    with pytest.raises(MapAssetsMissing) as refused:
        asyncio.run(docs.swagger_ui(Request({"type": "http"})))
    assert app._status(refused.value) == 503
    assert str(refused.value).startswith(f"Swagger UI is missing ({tmp_path / 'missing'}): install it with `npm ci")
    monkeypatch.setitem(page.STATIC_FILES, "swagger-ui/swagger-ui.css", (tmp_path / "missing.css", "text/css"))
    with pytest.raises(MapAssetsMissing) as missing:
        asyncio.run(page.static("swagger-ui/swagger-ui.css"))
    assert str(missing.value).startswith(f"{tmp_path / 'missing.css'} is missing: install it with `npm ci")
