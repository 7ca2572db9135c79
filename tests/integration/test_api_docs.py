"""``/docs`` and ``/openapi.json`` of a real ``pcrs-indexer serve``: the page loads Swagger UI from the
server itself (nothing from another site: the service runs on networks without internet), renders
every operation in headless Chromium without a console message, and the document gives every
operation a summary and its errors as the application answers them, ``{"code", "message"}``."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest
from selenium import webdriver

from indexer.api.docs import SWAGGER_UI
from tests.servers.api_fixtures import ADMIN, ApiServer, ApiServers, module_api_server_fixture  # noqa: F401
from tests.servers.browser import chromium, load  # noqa: F401 - fixture

pytestmark = pytest.mark.servers

ASSETS = {"/static/swagger-ui/swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
          "/static/swagger-ui/swagger-ui.css": ("swagger-ui.css", "text/css; charset=utf-8"),
          "/static/swagger-ui/favicon-32x32.png": ("favicon-32x32.png", "image/png")}
"""Every file /docs loads: its file in npm's swagger-ui-dist, its content type."""

ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


class Links(HTMLParser):
    """The ``src`` and ``href`` of every element of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value is not None]


@pytest.fixture(scope="module")
def server(module_api_server: ApiServers) -> ApiServer:  # noqa: F811
    """A server over a store of its own, without storage."""
    return module_api_server.start()


@pytest.fixture(scope="module")
def openapi(server: ApiServer) -> dict[str, Any]:
    with server.client() as client:
        answer = client.get("/openapi.json")
    assert (answer.status_code, answer.headers["content-type"]) == (200, "application/json")
    document: dict[str, Any] = answer.json()
    return document


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, ops in document["paths"].items() for method, op in ops.items()}


def test_docs_loads_only_the_servers_own_files(server: ApiServer) -> None:
    with server.client() as client:
        page = client.get("/docs")
        assert (page.status_code, page.headers["content-type"]) == (200, "text/html; charset=utf-8")
        assert re.findall(r"\w+://|//[\w.-]+\.\w", page.text) == []  # no URL of another site, not even a comment
        links = Links()
        links.feed(page.text)
        assert sorted(links.urls) == sorted(ASSETS)
        assert re.findall(r"url: '([^']*)'", page.text) == ["/openapi.json"]
        for url, (name, media_type) in ASSETS.items():
            answer = client.get(url)
            assert (url, answer.status_code, answer.headers["content-type"]) == (url, 200, media_type)
            assert answer.content == (SWAGGER_UI / name).read_bytes(), url
        assert client.get("/docs/oauth2-redirect").status_code == 404  # no OAuth2: no redirect page


def test_openapi_documents_every_operation_and_its_errors(server: ApiServer, openapi: dict[str, Any]) -> None:
    ops = operations(openapi)
    assert len(ops) == 15 and ("HEAD", "/storages/{storage_id}/files/{path}") in ops
    assert len({op["operationId"] for op in ops.values()}) == len(ops)  # unique: GET and HEAD of files too
    assert openapi["components"]["schemas"]["Error"] == {
        "title": "Error", "type": "object", "description": "Every error's answer.", "required": ["code", "message"],
        "properties": {"code": {"title": "Code", "type": "integer", "description": "The HTTP status"},
                       "message": {"title": "Message", "type": "string",
                                   "description": "One line, without credential"}}}
    assert set(openapi["components"]["schemas"]) == {"Error"}  # FastAPI's 422 bodies are never answered
    for key, op in ops.items():
        assert op["summary"].strip(), key
        statuses = {int(status) for status in op["responses"]}
        assert 422 not in statuses and {500, 503} <= statuses, key
        for status, response in op["responses"].items():
            if int(status) >= 400 and key != ("GET", "/healthz"):
                assert (key, status, response["content"]) == (key, status, ERROR)
                assert response["description"], (key, status)
    assert {(k, s) for k, op in ops.items() for s in op["responses"] if s in ("401", "409", "416")} == {
        (("POST", "/storages"), "401"), (("GET", "/storages"), "401"), (("POST", "/projets"), "401"),
        (("POST", "/storages/{storage_id}/scan"), "401"), (("POST", "/storages/{storage_id}/scan"), "409"),
        (("POST", "/storages/{storage_id}/generate-download-token"), "401"),
        (("GET", "/storages/{storage_id}/files/{path}"), "416"),
        (("HEAD", "/storages/{storage_id}/files/{path}"), "416")}
    with server.client() as client:  # what the server answers is what the document says
        for method, url, path, headers, status in (
                ("GET", "/storages/7", "/storages/{storage_id}", {}, 404),
                ("GET", "/storages", "/storages", {}, 401),
                ("POST", "/storages/7/scan", "/storages/{storage_id}/scan", ADMIN, 404),
                ("POST", "/projets", "/projets", ADMIN, 400),
                ("GET", "/storages/7/files/a.tif", "/storages/{storage_id}/files/{path}", {}, 404),
                ("GET", "/storages/7/quality", "/storages/{storage_id}/quality", {}, 404),
                ("GET", "/data/stockages/dalles.geojson?bbox=" + "1" * 201, "/data/stockages/dalles.geojson", {}, 400)):
            answer = client.request(method, url, headers=headers, content=b"[" if method == "POST" else None)
            assert (url, answer.status_code, set(answer.json())) == (url, status, {"code", "message"})
            assert str(status) in ops[(method, path)]["responses"], url


def test_swagger_ui_renders_every_operation_in_chromium(chromium: webdriver.Chrome,  # noqa: F811
                                                        server: ApiServer, openapi: dict[str, Any]) -> None:
    block = "operations-storages-get_storage_storages__storage_id__get"
    console = load(chromium, f"{server.url}/docs", ready=f"document.getElementById('{block}') !== null")
    assert console == []
    assert chromium.title == "pcrs-indexer - API"
    shown = chromium.execute_script(
        "return [...document.querySelectorAll('.opblock')].map(b => [b.id,"
        " b.querySelector('.opblock-summary-method').textContent,"
        " b.querySelector('.opblock-summary-path').dataset.path,"
        " b.querySelector('.opblock-summary-description').textContent]);")
    assert len(shown) == len(operations(openapi))
    assert {(method, path): summary for _, method, path, summary in shown} == {
        key: op["summary"] for key, op in operations(openapi).items()}
    assert [row[1:] for row in shown if row[0] == block] == [
        ["GET", "/storages/{storage_id}", "A storage's document: scan state and last result"]]
    loaded = chromium.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    assert sorted(set(loaded)) == sorted({server.url + url for url in ASSETS} | {server.url + "/openapi.json"})
