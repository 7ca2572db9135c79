"""A projet fetched from the PCRS site as it serves it: private stockages' parameters only with a token."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import Engine

from indexer.errors import ConfigError
from indexer.projet import load_projet
from indexer.secrets import SecretBox, new_key
from indexer.service import queueing
from indexer.settings import Settings
from indexer.storages.access import AccessOptions, RetryPolicy
from indexer.storages.addresses import AddressPolicy
from tests.unit.test_publication import document, ftp, storage_url

TOKEN = "editor-key-Zx81"
SITE_ACCESS = AccessOptions(retry=RetryPolicy(timeout_s=10), addresses=AddressPolicy.of(["127.0.0.1"]))
"""A projet URL is fetched as a storage is reached: the site on loopback must be allowed."""


class Site:
    """The PCRS site's ``GET /projets/:id`` on loopback: `filterSensitiveFields` unless the token is right."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.authorizations: list[str | None] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                auth = self.headers.get("Authorization")
                site.authorizations.append(auth)
                if auth is not None and auth != f"Token {TOKEN}":
                    self.send_response(403)
                    body = b'{"code":403,"message":"Jeton invalide"}'
                else:
                    shown = dict(site.doc)
                    if auth is None:
                        shown["livrables"] = [liv if liv.get("stockage_public") else
                                              {k: v for k, v in liv.items() if k != "stockage_params"}
                                              for liv in site.doc["livrables"]]
                    self.send_response(200)
                    body = json.dumps(shown).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[Site]:
    doc = document(ftp("Public"), {**ftp("Privé", username="ortho", password="pw-9f"), "stockage_public": False})
    server = Site(doc)
    yield server
    server.stop()


def test_the_token_brings_the_private_stockage_params(site: Site, engine: Engine) -> None:
    url = f"{site.url}projets/6523f6b0c3a5d1a2b3c4d5e6"
    settings = Settings(projet_api_url=site.url, projet_api_token=TOKEN)
    projet = load_projet(url, SITE_ACCESS, settings.projet_token(url))
    assert site.authorizations == [f"Token {TOKEN}"]
    queued = queueing.publish(engine, projet, None, storage_url, box=SecretBox(new_key()))
    assert [(q.livrable, q.url) for q in queued] == [("Public", "ftp://ftp.example.fr/ortho"),
                                                      ("Privé", "ftp://ortho:***@ftp.example.fr/ortho")]


def test_without_the_token_the_private_livrable_says_what_is_missing(site: Site, engine: Engine) -> None:
    url = f"{site.url}projets/6523f6b0c3a5d1a2b3c4d5e6"
    projet = load_projet(url, SITE_ACCESS, Settings(projet_api_url=site.url).projet_token(url))
    assert site.authorizations == [None]
    with pytest.raises(ConfigError, match=r"not published, nothing queued: livrable 'Privé': no stockage_params: "
                                          r"the site leaves them out .* \(PCRS_INDEXER_PROJET_API_TOKEN\)$"):
        queueing.publish(engine, projet, None, storage_url)


def test_the_token_goes_only_to_the_site(site: Site) -> None:
    url = f"{site.url}projets/6523f6b0c3a5d1a2b3c4d5e6"
    elsewhere = Settings(projet_api_url="https://pcrs.beta.gouv.fr/", projet_api_token=TOKEN)
    assert elsewhere.projet_token(url) is None
    load_projet(url, SITE_ACCESS, elsewhere.projet_token(url))
    assert site.authorizations == [None]
    with pytest.raises(ConfigError) as refused:
        load_projet(url, SITE_ACCESS, "wrong-token")
    assert "403" in str(refused.value) and "wrong-token" not in str(refused.value)
