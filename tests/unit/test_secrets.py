"""Credentials read once from a URL, kept out of every URL shown, scrubbed from every message."""

from __future__ import annotations

import io
import json
import logging
import sys
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from indexer.errors import InvalidSource
from indexer.storages import open_storage
from indexer.storages.access import Failure, ScrubFilter, keep_secret, mask_url, parse_location, scrub
from indexer.storages.ftp import FTPStorage
from indexer.storages.http import HTTPListingStorage
from indexer.storages.sftp import SFTPStorage

HOSTS = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
TEXT = st.text(min_size=0, max_size=30)
SHARED = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
"""The secrets a test's examples give are forgotten once the test ends, not between its examples."""


@SHARED
@given(user=TEXT, password=TEXT, host=HOSTS, port=st.none() | st.integers(0, 65535))
def test_encoded_credentials_round_trip_and_never_show(no_secrets: None, user: str, password: str, host: str,
                                                       port: int | None) -> None:
    hostport = host if port is None else f"{host}:{port}"
    url = f"ftp://{quote(user, safe='')}:{quote(password, safe='')}@{hostport}/lot%201/x?page=2"
    location = parse_location(url)
    assert (location.username, location.password, location.port) == (user, password, port)
    assert location.host == host.strip("[]")
    assert location.path == "/lot%201/x"
    assert location.shown == mask_url(url) == f"ftp://{quote(user, safe='')}:***@{hostport}/lot%201/x?page=2"
    if password:
        assert scrub(f"530 bad password {password}").endswith("***")


UNENCODED = st.text(st.characters(blacklist_characters="@\r\n", blacklist_categories=("Cs",)), min_size=1,
                    max_size=30)


@SHARED
@given(user=st.from_regex(r"[A-Za-z0-9._-]{1,12}", fullmatch=True), password=UNENCODED, host=HOSTS,
       port=st.integers(1, 65535))
def test_unencoded_slash_hash_and_query_in_a_password(no_secrets: None, user: str, password: str, host: str,
                                                      port: int) -> None:
    before = password.split("/")[0].split("?")[0].split("#")[0]
    # "user:8080/…" is a host and a port followed by a path: only a password whose text before its
    # first "/" or "?" is not a port number (or holding "#") can be told apart.
    assume("#" in password or not (before.isascii() and before.isdigit() and int(before) <= 65535))
    url = f"sftp://{user}:{password}@{host}:{port}/srv/pcrs"
    location = parse_location(url)
    assert (location.username, location.password, location.host, location.port, location.path) == (
        user, password, host.strip("[]"), port, "/srv/pcrs")
    assert mask_url(url) == f"sftp://{user}:***@{host}:{port}/srv/pcrs"


@SHARED
@given(port=st.integers(0, 10**8), password=st.text(st.characters(blacklist_categories=("Cs",)), min_size=4))
def test_any_port_is_masked_and_a_port_out_of_range_refused(no_secrets: None, port: int, password: str) -> None:
    url = f"ftp://u:{quote(password, safe='')}@h.example:{port}/x"
    assert mask_url(url) == f"ftp://u:***@h.example:{port}/x"
    if port <= 65535:
        assert parse_location(url).port == port
        return
    with pytest.raises(InvalidSource) as refused:
        parse_location(url)
    assert str(refused.value) == (f"ftp://u:***@h.example:{port}/x: the port must be a number from 0 to 65535, "
                                  f"not '{port}'")


@pytest.mark.parametrize(("url", "shown"), [
    ("http://user:Pass#word@h.example/l/", "http://user:***@h.example/l/"),
    ("ftp://pcrs:Pa/ss@h.example/livrable", "ftp://pcrs:***@h.example/livrable"),
    ("ftp://pcrs:p@ss@h.example/lot@1/", "ftp://pcrs:***@h.example/lot@1/"),
    ("https://h.example:8443/npm/pkg@1.0/", "https://h.example:8443/npm/pkg@1.0/"),
    ("s3://b/p?endpoint_url=https://key:secret@s3.example", "s3://b/p?endpoint_url=https://***@s3.example"),
    ("ftp://u:pw@h.example:99999/x", "ftp://u:***@h.example:99999/x"),
    ("http://[::1", "http://[::1"),
])
def test_urls_shown(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_storages_read_credentials_once_and_show_none(no_secrets: None) -> None:
    ftp = open_storage("ftp://pcrs:Pa/ss#w@h.example:2121/pcrs/lot%201")
    assert isinstance(ftp, FTPStorage)
    assert (ftp.server.username, ftp.server.password, ftp.server.port, ftp.root) == (
        "pcrs", "Pa/ss#w", 2121, "/pcrs/lot 1")
    assert ftp.url == "ftp://pcrs:***@h.example:2121/pcrs/lot%201"
    sftp = open_storage("sftp://u:Se/cret@h.example/~/pcrs")
    assert isinstance(sftp, SFTPStorage)
    assert (sftp.server.password, sftp.root, sftp.url) == ("Se/cret", "pcrs", "sftp://u:***@h.example/~/pcrs")
    http = open_storage("http://reader:Pass#word@h.example/l/")
    assert isinstance(http, HTTPListingStorage)
    assert (http.root_url, http.url) == ("http://reader:Pass%23word@h.example/l/", "http://reader:***@h.example/l/")
    with pytest.raises(InvalidSource) as refused:
        open_storage("ftp://u:Pw-1@h.example:99999/x")
    assert str(refused.value) == "ftp://u:***@h.example:99999/x: the port must be a number from 0 to 65535, not '99999'"
    with pytest.raises(InvalidSource) as credentials:
        open_storage("s3://b/p?endpoint_url=https://AKIAKEY:s3cret@s3.example")
    assert str(credentials.value) == ("s3://b/p?endpoint_url=https://***@s3.example: the endpoint URL must not hold "
                                      "credentials (give AWS keys the usual way)")
    assert scrub("Pa/ss#w Se/cret Pw-1 AKIAKEY s3cret Pa%2Fss%23w Pass#word") == "*** *** *** *** *** *** ***"


def test_failures_and_log_records_are_scrubbed(no_secrets: None) -> None:
    keep_secret("Log-Secret-99")
    assert Failure(False, "FTP 530 password Log-Secret-99 refused").detail == "FTP 530 password *** refused"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ScrubFilter())
    handler.setFormatter(logging.Formatter("%(message)s %(error)s"))
    logger = logging.getLogger("tests.secrets")
    logger.addHandler(handler)
    try:
        try:
            raise ValueError("no Log-Secret-99 here")
        except ValueError:
            logger.error("refused %s", "Log-Secret-99", exc_info=True, extra={"error": "530 Log-Secret-99"})
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "Log-Secret-99" not in text
    assert text.startswith("refused *** 530 ***\nTraceback (most recent call last):")
    assert text.endswith("ValueError: no *** here\n")


def test_worker_log_lines_are_scrubbed(no_secrets: None) -> None:
    from tasks.app import JsonFormatter

    keep_secret("Worker-Secret-42")
    record = logging.LogRecord("indexer.pipeline", logging.ERROR, "", 0, "scan failed: %s", ("Worker-Secret-42",), None)
    try:
        raise RuntimeError("530 Worker-Secret-42")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    record.error = "FTP 530 Worker-Secret-42"
    assert ScrubFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert (line["message"], line["error"]) == ("scan failed: ***", "FTP 530 ***")
    assert line["traceback"].endswith("RuntimeError: 530 ***")
