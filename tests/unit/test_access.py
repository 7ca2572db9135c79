"""The rules every storage follows, checked without a server: addresses, masking, sources, crawl."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from indexer.errors import ConfigError, ForbiddenAddress, InvalidSource, ListingLimitReached
from indexer.models import FileEntry
from indexer.projet import Livrable, livrable_source
from indexer.settings import Settings
from indexer.storages import AccessOptions, open_storage
from indexer.storages.access import mask_url
from indexer.storages.addresses import AddressPolicy
from indexer.storages.crawl import Child, Crawl, CrawlLimits
from indexer.storages.ftp import FTPStorage, classify_ftp
from indexer.storages.ftp_listing import parse_list_line
from indexer.storages.http import HTTPListingStorage
from indexer.storages.s3 import S3Storage
from indexer.storages.sftp import SFTPStorage


@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "a loopback address"),
    ("127.8.9.10", "a loopback address"),
    ("::1", "a loopback address"),
    ("::ffff:127.0.0.1", "a loopback address"),
    ("10.1.2.3", "a private address"),
    ("172.16.0.1", "a private address"),
    ("192.168.1.1", "a private address"),
    ("fd00::1", "a private address"),
    ("169.254.169.254", "a link-local address"),
    ("fe80::1", "a link-local address"),
    ("224.0.0.251", "a multicast address"),
    ("ff02::1", "a multicast address"),
    ("0.0.0.0", "an unspecified address"),
    ("100.64.0.1", "a reserved address"),
    ("240.0.0.1", "a reserved address"),
    ("193.51.0.1", None),
    ("2001:4860:4860::8888", None),
])
def test_only_public_addresses_are_allowed_by_default(address: str, kind: str | None) -> None:
    assert AddressPolicy().refusal(address) == kind


def test_the_allow_list_lets_its_networks_through() -> None:
    policy = AddressPolicy.of(["127.0.0.0/8", "10.20.0.0/16", "::1"])
    assert [policy.refusal(a) for a in ("127.0.0.1", "::ffff:127.0.0.2", "10.20.3.4", "::1")] == [None] * 4
    assert policy.refusal("10.21.0.1") == "a private address"
    assert policy.refusal("169.254.169.254") == "a link-local address"


def test_a_name_is_checked_after_resolution() -> None:
    with pytest.raises(ForbiddenAddress) as refused:
        AddressPolicy().resolve("localhost", 80)
    assert str(refused.value).startswith("localhost resolves to ")
    assert str(refused.value).endswith(", a loopback address: refused (allow it with the allowed_networks setting)")
    assert "127.0.0.1" in AddressPolicy.of(["127.0.0.0/8", "::1"]).resolve("localhost", 80)


def test_default_settings_refuse_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PCRS_INDEXER_ALLOWED_NETWORKS", raising=False)
    options = AccessOptions.from_settings(Settings(_env_file=None))  # type: ignore[call-arg]
    assert options.addresses == AddressPolicy()
    assert options.ftp_max_connections == 2
    monkeypatch.setenv("PCRS_INDEXER_ALLOWED_NETWORKS", "127.0.0.0/8, 10.0.0.0/8")
    assert Settings(_env_file=None).allowed_networks == ["127.0.0.0/8", "10.0.0.0/8"]  # type: ignore[call-arg]
    monkeypatch.setenv("PCRS_INDEXER_ALLOWED_NETWORKS", '["192.168.0.0/16"]')
    assert Settings(_env_file=None).allowed_networks == ["192.168.0.0/16"]  # type: ignore[call-arg]


@pytest.mark.parametrize(("url", "masked"), [
    ("ftp://pcrs:s3cr%40t@h.example:2121/livrable", "ftp://pcrs:***@h.example:2121/livrable"),
    ("sftp://u:p@[2001:db8::1]:22/x", "sftp://u:***@[2001:db8::1]:22/x"),
    ("https://h.example/l/?token=abc&page=2", "https://h.example/l/?token=***&page=2"),
    ("s3://b/p?endpoint_url=https://s3.gra.io.cloud.ovh.net", "s3://b/p?endpoint_url=https://s3.gra.io.cloud.ovh.net"),
    ("https://user@h.example/l/", "https://user@h.example/l/"),
    ("/data/livrable", "/data/livrable"),
])
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


NOW = datetime(2026, 3, 15, 12, 0)


@pytest.mark.parametrize(("line", "child"), [
    ("-rw-r--r--   1 nobody   nogroup     17607 Mar 14 10:38 PCRS_651000_6862000_L93.tif",
     Child("PCRS_651000_6862000_L93.tif", False, 17607, "2026-03-14T10:38:00")),
    ("-rw-r--r--   1 nobody   nogroup     17607 Dec 24 23:59 dalle de Noël.tif",
     Child("dalle de Noël.tif", False, 17607, "2025-12-24T23:59:00")),
    ("drwxr-xr-x   2 1000     1000         4096 Jan  2  2024 lot 1",
     Child("lot 1", True, None, "2024-01-02T00:00:00")),
    ("-rw-r--r-- 1 ftp 39 Mar  1 08:00 LISEZMOI.txt", Child("LISEZMOI.txt", False, 39, "2026-03-01T08:00:00")),
    ("lrwxrwxrwx   1 nobody   nogroup        2 Mar 14 10:38 boucle -> ..",
     Child("boucle", False, None, "2026-03-14T10:38:00")),
    ("-rw-r--r--+  1 owner    group      123456 Feb 29  2024 bissextile.jp2",
     Child("bissextile.jp2", False, 123456, "2024-02-29T00:00:00")),
    ("01-02-24  10:00AM       <DIR>          lot 2", Child("lot 2", True, None, "2024-01-02T10:00:00")),
    ("11-28-2026  09:05PM             17607 PCRS a.tif", Child("PCRS a.tif", False, 17607, "2026-11-28T21:05:00")),
    ("total 12", None),
    ("drwxr-xr-x   2 nobody   nogroup      4096 Mar 14 10:38 .", None),
    ("crw-rw-rw-   1 root     root       1,   3 Mar 14 10:38 null", None),
])
def test_list_lines(line: str, child: Child | None) -> None:
    assert parse_list_line(line, NOW) == child


def test_ftp_errors_are_classified() -> None:
    import ftplib

    assert classify_ftp(ftplib.error_temp("421 Too many connections (2) from this IP")).transient
    assert classify_ftp(ftplib.error_perm(
        "530 Sorry, the maximum number of clients (2) from your host are already connected.")).transient
    assert not classify_ftp(ftplib.error_perm("530 Login incorrect.")).transient
    assert classify_ftp(ftplib.error_perm("550 /x: No such file")).detail == "FTP 550 /x: No such file"
    assert classify_ftp(ConnectionResetError()).detail == "connection reset"
    assert classify_ftp(TimeoutError()).detail == "timed out"


def test_crawl_skips_a_folder_repeating_an_ancestor() -> None:
    crawl = Crawl("http://h/l/", CrawlLimits(max_depth=10, max_entries=100))
    root = [Child("a.tif", False, 1, "t"), Child("lot", True)]
    assert [path for path, _ in crawl.visit("", root)] == ["lot/"]
    lot = [Child("b.tif", False, 2, "t"), Child("boucle", True)]
    assert [path for path, _ in crawl.visit("lot/", lot)] == ["lot/boucle/"]
    assert crawl.visit("lot/boucle/", root) == []  # the root again: a link back up
    assert crawl.visit("lot/boucle2/", lot) == []  # its parent again
    assert [e.path for e in crawl.result()] == ["a.tif", "lot/b.tif"]


def test_crawl_caps() -> None:
    deep = Crawl("http://h/l/", CrawlLimits(max_depth=1, max_entries=100))
    deep.visit("", [Child("a", True)])
    with pytest.raises(ListingLimitReached) as too_deep:
        deep.visit("a/", [Child("b", True)])
    assert str(too_deep.value) == ("cannot list http://h/l/: a/b/ is more than 1 folder levels deep "
                                   "(the max_depth setting)")
    many = Crawl("http://h/l/", CrawlLimits(max_depth=1, max_entries=2))
    with pytest.raises(ListingLimitReached) as too_many:
        many.visit("", [Child(f"{i}.tif", False) for i in range(3)])
    assert str(too_many.value) == "cannot list http://h/l/: more than 2 files (the max_entries setting)"
    wide = Crawl("http://h/l/", CrawlLimits(max_folders=3))
    assert [path for path, _ in wide.visit("", [Child("a", True), Child("b", True)])] == ["a/", "b/"]
    with pytest.raises(ListingLimitReached) as too_wide:
        wide.visit("a/", [Child("c", True)])
    assert str(too_wide.value) == ("cannot list http://h/l/: more than 3 folders (the max_folders setting), "
                                   "a/c/ among them")
    assert Settings(_env_file=None).max_folders == 10_000  # type: ignore[call-arg]


def test_projet_stockages_become_sources() -> None:
    def source(stockage: str, **params: object) -> str:
        return livrable_source(Livrable(nom="l", stockage=stockage, stockage_params=params))

    assert source("http", url="https://h.example/pcrs/") == "https://h.example/pcrs/"
    assert source("ftp", host="ftp.example", port=2121, startPath="/pcrs/2024/", username="u", password="p@ss:w/rd",
                  secure=True) == "ftps://u:p%40ss%3Aw%2Frd@ftp.example:2121/pcrs/2024"
    assert source("ftp", host="ftp.example", startPath="lot 1", secure="false") == "ftp://ftp.example/lot%201"
    assert source("sftp", host="2001:db8::1", port=22, startPath="/srv/pcrs", username="u") == (
        "sftp://u@[2001:db8::1]:22/srv/pcrs")
    assert source("s3", bucket="pcrs", prefix="/ortho/2024/", endpoint_url="https://s3.fr-par.scw.cloud",
                  region="fr-par") == "s3://pcrs/ortho/2024?endpoint_url=https://s3.fr-par.scw.cloud&region=fr-par"
    with pytest.raises(ConfigError, match="stockage 'webdav' is not supported"):
        source("webdav", url="https://h/")
    with pytest.raises(ConfigError, match="stockage ftp without host"):
        source("ftp", startPath="x")
    with pytest.raises(ConfigError, match="stockage s3 without bucket"):
        source("s3", prefix="x")


def test_sources_open_the_right_storage_without_connecting(tmp_path: Path) -> None:
    options = AccessOptions(s3_endpoint_url="https://s3.gra.io.cloud.ovh.net", sftp_key_file=tmp_path / "key")
    ftp = open_storage("ftps://u:p%40ss%3Aw%2Frd@ftp.example:2121/pcrs/lot%201", options=options)
    assert isinstance(ftp, FTPStorage)
    assert (ftp.server.username, ftp.server.password, ftp.server.tls) == ("u", "p@ss:w/rd", True)
    assert ftp.root == "/pcrs/lot 1"
    assert ftp.url == "ftps://u:***@ftp.example:2121/pcrs/lot%201"
    assert "p@ss" not in repr(ftp.server)
    sftp = open_storage("sftp://u@h.example/~/pcrs", options=options)
    assert isinstance(sftp, SFTPStorage)
    assert (sftp.server.port, sftp.root, sftp.server.key_file) == (22, "pcrs", tmp_path / "key")
    s3 = open_storage("s3://pcrs/ortho/2024/?region=gra", options=options)
    assert isinstance(s3, S3Storage)
    assert (s3.bucket, s3.prefix, s3.region) == ("pcrs", "ortho/2024", "gra")
    assert s3.url == "s3://pcrs/ortho/2024?endpoint_url=https://s3.gra.io.cloud.ovh.net"
    assert isinstance(open_storage("https://h.example/pcrs", options=options), HTTPListingStorage)


@pytest.mark.parametrize(("source", "message"), [
    ("gopher://h/x", "gopher://h/x: unsupported scheme 'gopher' (use a folder, file://, http(s)://, ftp(s)://, "
                     "sftp:// or s3://)"),
    ("ftp:///x", "ftp:///x: no host in the URL"),
    ("s3:///x", "s3:///x: no bucket in the URL"),
    ("s3://b/x?acl=1", "s3://b/x?acl=1: unknown parameter 'acl' (use endpoint_url and region)"),
])
def test_invalid_sources(source: str, message: str) -> None:
    with pytest.raises(InvalidSource) as invalid:
        open_storage(source)
    assert str(invalid.value) == message


def test_storages_stat_returns_a_listed_entry_unchanged() -> None:
    entry = FileEntry("a.tif", 10, "2024-01-02T10:00:00")
    assert open_storage("ftp://h.example/x").stat(entry) is entry
