"""The HTTP API on a real ``pcrs-indexer serve`` (uvicorn) process, read with httpx."""

from __future__ import annotations

from tests.servers.api_fixtures import ADMIN, ApiServers


def test_healthz_says_the_mode_and_the_docs_are_served(module_api_server: ApiServers) -> None:
    server = module_api_server.start()
    with server.client() as client:
        health = client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        assert health.json()["mode"] == "in-process"
        assert health.json()["store"] == "ok" and health.json()["broker"] is None
        docs = client.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        assert client.get("/openapi.json").json()["info"]["title"] == "pcrs-indexer"
        missing = client.get("/nowhere", headers={"Origin": "https://pcrs.beta.gouv.fr"})
        assert missing.status_code == 404
        assert missing.json() == {"code": 404, "message": "Not Found"}
        assert missing.headers["access-control-allow-origin"] == "*"
        assert ADMIN
