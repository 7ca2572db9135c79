"""One livrable, published on every kind of storage, must give the same outputs; politely read."""

from __future__ import annotations

import ftplib
import json
import logging
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from click.testing import CliRunner

from indexer.cli import main
from indexer.errors import ScanUnreliable
from indexer.pipeline import ScanOptions, read_all
from indexer.projet import Livrable, livrable_source
from indexer.read.formats import Listing, raster_mime
from indexer.sample import write_dalle
from indexer.settings import get_settings
from indexer.storages import AccessOptions, open_storage
from indexer.storages.access import RetryPolicy
from indexer.storages.addresses import AddressPolicy
from tests.servers.recording_proxy import RecordingProxy
from tests.servers.servers import SFTP_USER, FaultyHTTP, HostileSFTP, Nginx, ProFTPD, PythonHTTP, public_folder
from tests.servers.storage_fixtures import (
    FTP_PASSWORD,
    KEYED_BUCKET,
    PUBLIC_BUCKET,
    S3_KEY,
    S3_SECRET,
    SFTP_PASSWORD,
    Served,
    clear_aws,
    index_to,
    outputs,
    settings_for,
    start_served,
)

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """nginx, Apache, lighttpd, http.server, three ProFTPD, sshd and moto, all serving the sample."""
    bundle = start_served(tmp_path_factory.mktemp("servers"))
    yield bundle
    bundle.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No AWS keys anywhere: S3 requests go unsigned unless the test sets some."""
    clear_aws(monkeypatch, tmp_path)
    return monkeypatch


@pytest.fixture(scope="module")
def local(served: Served, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The outputs of the livrable indexed from its folder: the reference."""
    out = tmp_path_factory.mktemp("local") / "out"
    index_to(settings_for(served, out.parent), str(served.livrable), out)
    return outputs(out)


def rasters(served: Served, empty: bool = False) -> list[str]:
    """The raster files of the livrable; the 0-byte one only if `empty`, as a listing without sizes
    cannot tell it apart. Each costs exactly one read."""
    return sorted(p.relative_to(served.livrable).as_posix() for p in served.livrable.rglob("*")
                  if p.is_file() and raster_mime(p.name) and (empty or p.stat().st_size > 0))


def projet_sources(served: Served) -> dict[str, str]:
    """The same storages described as a projet document's livrables."""
    livrables = {
        "projet-http": Livrable(nom="l", stockage="http", stockage_params={"url": f"{served.nginx.url}/livrable/"}),
        "projet-ftp": Livrable(nom="l", stockage="ftp", stockage_params={
            "host": "127.0.0.1", "port": served.ftp.port, "startPath": "livrable", "username": "pcrs",
            "password": FTP_PASSWORD, "secure": False}),
        "projet-ftps": Livrable(nom="l", stockage="ftp", stockage_params={
            "host": "127.0.0.1", "port": served.ftps.port, "startPath": "/livrable/", "username": "pcrs",
            "password": FTP_PASSWORD, "secure": True}),
        "projet-sftp": Livrable(nom="l", stockage="sftp", stockage_params={
            "host": "127.0.0.1", "port": served.sshd.port, "startPath": str(served.livrable),
            "username": SFTP_USER, "password": SFTP_PASSWORD}),
        "projet-s3": Livrable(nom="l", stockage="s3", stockage_params={
            "bucket": PUBLIC_BUCKET, "prefix": "pcrs/livrable", "endpoint_url": served.s3.url, "region": "eu-west-3"}),
    }
    return {name: livrable_source(livrable) for name, livrable in livrables.items()}


SOURCES = ["nginx", "apache-fancy", "apache-table", "apache-plain", "lighttpd", "http.server", "ftp-user",
           "ftp-anonymous", "ftp-list", "ftps", "sftp-password", "sftp-key", "s3-anonymous", "s3-keyed"]
PROJET_SOURCES = ["projet-http", "projet-ftp", "projet-ftps", "projet-sftp", "projet-s3"]


@pytest.mark.parametrize("name", SOURCES + PROJET_SOURCES)
def test_every_storage_gives_the_outputs_of_the_folder(name: str, served: Served, local: dict[str, Any],
                                                       aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    source = {**served.sources(), **projet_sources(served)}[name]
    overrides: dict[str, Any] = {}
    if name == "sftp-key":
        overrides["sftp_key_file"] = served.sshd.client_key
    if name == "s3-keyed":
        aws_env.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
        aws_env.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    summary = index_to(settings_for(served, tmp_path, **overrides), source, tmp_path / "out")
    assert (summary["indexed"], summary["skipped"]) == (15, 7)
    got = outputs(tmp_path / "out")
    assert got["dalles"] == local["dalles"]
    assert got["livrables"] == local["livrables"]
    assert got["report"] == local["report"]


def test_ftp_logs_in_once_per_connection_and_reads_each_dalle_with_one_write(served: Served, tmp_path: Path) -> None:
    before = len(served.ftp.commands())
    with RecordingProxy(served.ftp.port) as proxy:
        index_to(settings_for(served, tmp_path, concurrency=16),
                 f"ftp://pcrs:{FTP_PASSWORD}@127.0.0.1:{proxy.port}/livrable", tmp_path / "out")
        writes = proxy.recorded()
    commands = served.ftp.commands()[before:]
    logins = [c for c in commands if c.command == "PASS"]
    assert [c.status for c in logins] == ["230", "230"]  # the cap, 2 connections, each logged in once
    assert len({c.session for c in commands}) == 2
    names = [c.command for c in commands]
    assert names.count("MLSD") == names.count("PASV") == 5  # the root and its four folders
    retrieved = Counter(c.argument for c in commands if c.command == "RETR")
    assert retrieved == {f"/livrable/{path}": 1 for path in rasters(served)}
    # Three commands per dalle: EPSV, RETR and the ABOR cutting the transfer once the header is in.
    assert names.count("EPSV") == names.count("ABOR") == len(rasters(served))
    assert names.count("TYPE") == 5 + 2  # TYPE A before each listing, TYPE I once per connection before the reads
    assert not [c for c in commands if c.command == "REST"]  # header reads start at 0
    assert names.count("QUIT") == 2
    # Each read is one write on its connection: the last transfer's ABOR, EPSV and RETR together,
    # so that it waits for one answer (EPSV's) before its data connection.
    assert len(writes) == 2
    for chunks in writes:
        reads = [chunk for chunk in chunks if b"RETR " in chunk]
        assert re.fullmatch(rb"TYPE I\r\nEPSV\r\nRETR /livrable/[^\r\n]+\r\n", reads[0]), reads[0]
        for chunk in reads[1:]:
            assert re.fullmatch(rb"ABOR\r\nEPSV\r\nRETR /livrable/[^\r\n]+\r\n", chunk), chunk
        assert chunks[-1] == b"ABOR\r\nQUIT\r\n"
    assert sum(len([c for c in chunks if b"RETR " in c]) for chunks in writes) == len(rasters(served))


def test_ftp_reads_a_range_with_rest_on_the_same_login(served: Served) -> None:
    before = len(served.ftp.commands())
    storage = open_storage(served.sources()["ftp-user"],
                           options=AccessOptions.from_settings(settings_for(served, Path("/nonexistent"))))
    path = max(rasters(served), key=lambda p: (served.livrable / p).stat().st_size)
    whole = (served.livrable / path).read_bytes()
    assert len(whole) > 70100
    with storage:
        assert storage.read_range(path, 1000, 3000) == whole[1000:3000]
        assert storage.read_range(path, 70000, 70100) == whole[70000:70100]
    commands = served.ftp.commands()[before:]
    assert [(c.command, c.argument) for c in commands if c.command in ("PASS", "REST", "RETR")] == [
        ("PASS", "(hidden)"), ("REST", "1000"), ("RETR", f"/livrable/{path}"), ("REST", "70000"),
        ("RETR", f"/livrable/{path}")]


def test_ftp_without_mlsd_lists_with_list(served: Served, tmp_path: Path) -> None:
    before = len(served.ftp_list.commands())
    storage = open_storage(served.sources()["ftp-list"], options=AccessOptions.from_settings(
        settings_for(served, tmp_path)))
    with storage:
        files = storage.list_files()
    local = open_storage(str(served.livrable)).list_files()
    assert [(f.path, f.size) for f in files] == [(f.path, f.size) for f in local]
    assert all(f.mtime and len(f.mtime) == 19 for f in files)  # the server's local time, to the minute
    commands = [c.command for c in served.ftp_list.commands()[before:]]
    assert "MLSD" not in commands
    assert commands.count("LIST") == 5


def test_sftp_reads_are_in_flight_together_on_one_connection(tmp_path: Path) -> None:
    server = HostileSFTP(tmp_path / "sftp", "files").start()
    try:
        storage = open_storage(f"sftp://pcrs:Sftp-Pass-1@{server.host}/srv/pcrs", AccessOptions(
            addresses=AddressPolicy.of(["127.0.0.0/8"]), retry=RetryPolicy(retries=0, timeout_s=10)))
        with storage:
            listing = Listing.of(storage.list_files())
            results = read_all(storage, listing, listing.candidates, ScanOptions(concurrency=8))
            cipher = storage._fs._client.get_extra_info("send_cipher")  # type: ignore[attr-defined]
        requests = [r[:2] for r in server.requests()]
    finally:
        server.stop()
    files = [f"/srv/pcrs/d{n:03d}.tif" for n in range(40)]
    assert [(r.path, r.reason) for r in results] == [(f.rsplit("/", 1)[1], "corrupt") for f in files]  # zeros
    assert [r for r in requests if r[0] == "LOGIN"] == [("LOGIN", "pcrs")]  # one for the listing and every read
    assert cipher == "aes128-gcm@openssh.com"  # one call per packet in hardware, not ChaCha20 partly in Python
    # Per dalle: OPEN, one READ of its 1,000 bytes, CLOSE; no STAT (the size comes from the listing).
    assert sorted(p for r, p in requests if r == "OPEN") == files
    assert sorted(p for r, p in requests if r == "READ") == [f"{f}@0+1000" for f in files]
    assert sorted(p for r, p in requests if r == "CLOSE") == files
    assert {r for r, _ in requests} == {"LOGIN", "READDIR", "OPEN", "READ", "CLOSE"}
    # Opened and not yet closed when the server got each request: the window's reads in flight together.
    open_now, most = 0, 0
    for request, _ in requests:
        open_now += {"OPEN": 1, "CLOSE": -1}.get(request, 0)
        most = max(most, open_now)
    # Four reads share a channel before sshfs opens more; each of the window's 8 reads may hold its
    # file open, and the file before it whose CLOSE, not waited for, is still to go out: 16 at most.
    assert 4 <= most <= 16


def test_sftp_logs_in_once_for_the_whole_scan(served: Served, tmp_path: Path) -> None:
    before = len(served.sshd.logins())
    index_to(settings_for(served, tmp_path), served.sources()["sftp-password"], tmp_path / "out")
    assert served.sshd.logins()[before:] == ["password"]


def test_s3_lists_with_one_request_and_reads_each_dalle_once(served: Served, aws_env: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    before = len(served.s3.requests())
    index_to(settings_for(served, tmp_path), served.sources()["s3-anonymous"], tmp_path / "out")
    requests = served.s3.requests()[before:]
    assert [r.path for r in requests if "list-type=2" in r.path] == [
        f"/{PUBLIC_BUCKET}?list-type=2&prefix=pcrs/livrable/&delimiter=&encoding-type=url"]
    reads = Counter(unquote(r.path) for r in requests if r.method == "GET" and "list-type" not in r.path)
    assert reads == {f"/{PUBLIC_BUCKET}/pcrs/livrable/{path}": 1 for path in rasters(served)}


def test_s3_keyed_bucket_refuses_anonymous_reads(served: Served, aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Listed, but every raster but the 0-byte one (known empty from the listing) is refused: the
    # scan fails rather than publish an empty livrable.
    with pytest.raises(ScanUnreliable) as failed:
        index_to(settings_for(served, tmp_path), served.sources()["s3-keyed"], tmp_path / "out")
    assert str(failed.value) == (
        f"cannot read s3://{KEYED_BUCKET}/livrable?endpoint_url={served.s3.url}: 21 of 22 dalles unreadable "
        "(more than 2%, the max_unreadable_share setting), anomalies/illisible.tif: access denied (Forbidden); "
        "the last good result is kept")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["apache-fancy", "apache-table", "lighttpd"])
def test_http_listings_give_dates_and_cost_one_get_per_dalle(name: str, served: Served, tmp_path: Path) -> None:
    server = served.lighttpd if name == "lighttpd" else served.apache
    before = len(server.requests())
    index_to(settings_for(served, tmp_path), served.sources()[name], tmp_path / "out")
    requests = server.requests()[before:]
    assert {r.method for r in requests} == {"GET"}  # no HEAD: the listing gives the dates
    assert len([r for r in requests if r.path.endswith("/")]) == 5
    files = Counter(r.path.rsplit("/", 1)[-1] for r in requests if not r.path.endswith("/"))
    # lighttpd shows a 0-byte file as 0.0K: its emptiness is only known by reading it.
    assert files == {path.rsplit("/", 1)[-1]: 1 for path in rasters(served, empty=name == "lighttpd")}
    storage = open_storage(served.sources()[name], options=AccessOptions.from_settings(settings_for(served, tmp_path)))
    entries = storage.list_files()
    assert all(e.mtime is not None for e in entries)
    # A size shown in bytes is exact; one shown rounded (2.1K) is none at all.
    actual = {e.path: (served.livrable / e.path).stat().st_size for e in entries}
    assert all(e.size in (None, actual[e.path]) for e in entries)
    assert all(e.size is None for e in entries if actual[e.path] >= 1024)


def test_stat_heads_only_what_the_listing_lacks(served: Served, tmp_path: Path) -> None:
    options = AccessOptions.from_settings(settings_for(served, tmp_path))
    plain = open_storage(served.sources()["http.server"], options=options)
    entry = next(e for e in plain.list_files() if e.path == "lot 1/PCRS_651000_6862000_L93.tif")
    assert (entry.size, entry.mtime) == (None, None)
    before = len(served.pyhttp.requests())
    stated = plain.stat(entry)
    assert stated.size == (served.livrable / entry.path).stat().st_size
    assert stated.mtime is not None and stated.mtime.startswith("20")
    assert [(r.method, unquote(r.path)) for r in served.pyhttp.requests()[before:]] == [
        ("HEAD", f"/livrable/{entry.path}")]
    nginx = open_storage(served.sources()["nginx"], options=options)
    listed = next(e for e in nginx.list_files() if e.path == entry.path)
    served.nginx.reset_log()
    assert nginx.stat(listed) == listed
    assert served.nginx.requests() == []


# Resilience


def test_503_then_success_is_retried(served: Served, local: dict[str, Any], tmp_path: Path) -> None:
    server = FaultyHTTP(served.root, tmp_path / "faulty", fail_first=1).start()
    try:
        index_to(settings_for(served, tmp_path, retries=2), f"{server.url}/livrable/", tmp_path / "out")
        requests = server.requests()
    finally:
        server.stop()
    got = outputs(tmp_path / "out")
    assert (got["dalles"], got["livrables"]) == (local["dalles"], local["livrables"])
    statuses: dict[str, list[int]] = {}
    for r in requests:
        statuses.setdefault(r.path, []).append(r.status)
    assert set(map(tuple, statuses.values())) == {(503, 200)}  # every page and dalle: once refused, once served
    assert len(statuses) == 5 + len(rasters(served, empty=True))


def test_a_stalled_dalle_times_out_and_the_others_are_indexed(served: Served, tmp_path: Path) -> None:
    stalled = "lot 1/PCRS_651000_6862000_L93.tif"
    server = FaultyHTTP(served.root, tmp_path / "faulty", stall="/livrable/lot%201/PCRS_651000_6862000").start()
    try:
        summary = index_to(settings_for(served, tmp_path, retries=1, timeout_s=2.0), f"{server.url}/livrable/",
                           tmp_path / "out")
        attempts = [r for r in server.requests() if r.status == 0]
    finally:
        server.stop()
    assert (summary["indexed"], summary["skipped"]) == (14, 8)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    expected = {"path": stalled, "reason": "unreadable", "detail": f"{stalled}: timed out (2 attempts)"}
    assert expected in report["skipped"]
    assert len(attempts) == 2


def cli_index(*args: str) -> Any:
    return CliRunner().invoke(main, ["index", *args, "--quiet"])


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """The command line's settings, read afresh from the environment by each test."""
    monkeypatch.setenv("PCRS_INDEXER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("PCRS_INDEXER_TIMEOUT_S", "10")
    monkeypatch.setenv("PCRS_INDEXER_RETRIES", "1")
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.mark.parametrize("scheme", ["http", "ftp", "sftp"])
def test_a_server_that_never_answers_fails_the_scan_with_one_line(scheme: str, served: Served,
                                                                  cli_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cli_env.setenv("PCRS_INDEXER_TIMEOUT_S", "0.5")
    server = FaultyHTTP(served.root, tmp_path / "silent", silent=True).start()
    try:
        while not server.requests():  # the connection that saw the server start, once logged
            time.sleep(0.01)
        probe = len(server.requests())
        source = f"{scheme}://u:pw-never-shown@127.0.0.1:{server.port}/livrable/"
        result = cli_index(source, "--out", str(tmp_path / "out"))
        connections = server.requests()[probe:]
    finally:
        server.stop()
    masked = f"{scheme}://u:***@127.0.0.1:{server.port}/livrable/"
    assert result.exit_code == 3
    # 0.5 s, then a 0.5 s wait would leave no time for another try within 0.5 s × (1 retry + 1).
    assert result.stderr == (f"pcrs-indexer: error: cannot list {masked}: timed out; no retry: it would end past "
                             "the 1 s deadline (timeout_s × (retries + 1))\n")
    assert len(connections) == 1


def test_an_unreachable_ftp_storage_keeps_the_last_good_result(served: Served, cli_env: Any, tmp_path: Path) -> None:
    server = ProFTPD(served.root, tmp_path / "ftp", password=FTP_PASSWORD).start()
    source = f"ftp://pcrs:{FTP_PASSWORD}@{server.host}/livrable"
    out, db = tmp_path / "out", f"sqlite:///{tmp_path / 'state.sqlite'}"
    try:
        assert cli_index(source, "--out", str(out), "--db", db).exit_code == 0
    finally:
        server.stop()
    before = {name: (out / name).read_bytes() for name in ("dalles.geojson", "livrables.geojson", "report.json")}
    result = cli_index(source, "--out", str(out), "--db", db)
    assert result.exit_code == 3
    assert result.stderr == (f"pcrs-indexer: error: cannot list ftp://pcrs:***@{server.host}/livrable: "
                             "connection refused (2 attempts)\n")
    assert {name: (out / name).read_bytes() for name in before} == before


# The FTP connection cap


def hold_connections(server: ProFTPD, count: int) -> list[ftplib.FTP]:
    held = []
    for _ in range(count):
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", server.port)
        ftp.login("pcrs", FTP_PASSWORD)
        held.append(ftp)
    return held


def test_a_full_ftp_server_is_read_through_the_connections_it_accepts(served: Served, local: dict[str, Any],
                                                                     tmp_path: Path) -> None:
    server = ProFTPD(served.root, tmp_path / "ftp", password=FTP_PASSWORD, max_clients=2).start()
    held = hold_connections(server, 1)
    try:
        ours = len(server.commands())
        index_to(settings_for(served, tmp_path, concurrency=16), f"ftp://pcrs:{FTP_PASSWORD}@{server.host}/livrable",
                 tmp_path / "out")
        commands = server.commands()[ours:]
    finally:
        for ftp in held:
            ftp.close()
        server.stop()
    got = outputs(tmp_path / "out")
    assert (got["dalles"], got["livrables"]) == (local["dalles"], local["livrables"])
    # One login; the second connection was refused (the cap is 2, one is held) and not tried again.
    assert [c.status for c in commands if c.command == "PASS"] == ["230", "530"]
    assert len({c.session for c in commands if c.command == "RETR"}) == 1


def test_an_ftp_server_at_its_cap_is_waited_for_then_read(served: Served, local: dict[str, Any],
                                                          tmp_path: Path) -> None:
    server = ProFTPD(served.root, tmp_path / "ftp", password=FTP_PASSWORD, max_clients=2).start()
    held = hold_connections(server, 2)

    def release_once_refused() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not [c for c in server.commands() if c.status == "530"]:
            time.sleep(0.02)
        for ftp in held:
            ftp.close()

    release = threading.Thread(target=release_once_refused)
    try:
        release.start()
        index_to(settings_for(served, tmp_path, retries=3), f"ftp://pcrs:{FTP_PASSWORD}@{server.host}/livrable",
                 tmp_path / "out")
        refused = [c for c in server.commands() if c.command == "PASS" and c.status == "530"]
    finally:
        release.join()
        server.stop()
    got = outputs(tmp_path / "out")
    assert (got["dalles"], got["livrables"]) == (local["dalles"], local["livrables"])
    # Refused, then served on a later attempt of the same scan: the held connections close once the
    # first refusal is in ProFTPD's log, and an attempt made before that close is refused too.
    assert 1 <= len(refused) <= 3  # at least once, within the scan's 3 retries


def test_an_ftp_server_that_stays_full_fails_the_scan_with_one_line(served: Served, cli_env: Any,
                                                                    tmp_path: Path) -> None:
    server = ProFTPD(served.root, tmp_path / "ftp", password=FTP_PASSWORD, max_clients=2).start()
    held = hold_connections(server, 2)
    try:
        result = cli_index(f"ftp://pcrs:{FTP_PASSWORD}@{server.host}/livrable", "--out", str(tmp_path / "out"))
    finally:
        for ftp in held:
            ftp.close()
        server.stop()
    assert result.exit_code == 3
    assert result.stderr == (
        f"pcrs-indexer: error: cannot list ftp://pcrs:***@{server.host}/livrable: FTP 530 Sorry, the maximum "
        "number of clients (2) from your host are already connected. (2 attempts)\n")


# Loops and caps


@pytest.fixture
def looping() -> Iterator[Path]:
    """A small livrable whose sub-folder links back to its parent (a symbolic link loop)."""
    root = public_folder()
    write_dalle(root / "livrable" / "lot" / "a.tif", (700000.0, 6600200.0), pixels=64, resolution_m=1.0)
    write_dalle(root / "livrable" / "b.tif", (700064.0, 6600200.0), pixels=64, resolution_m=1.0)
    (root / "livrable" / "lot" / "boucle").symlink_to("..")
    yield root
    shutil.rmtree(root)


def test_a_listing_with_a_link_loop_is_crawled_once(looping: Path, served: Served, tmp_path: Path) -> None:
    server = Nginx(looping, tmp_path / "nginx").start()
    try:
        storage = open_storage(f"{server.url}/livrable/", options=AccessOptions.from_settings(
            settings_for(served, tmp_path)))
        files = storage.list_files()
        pages = [unquote(r.path) for r in server.requests()]
    finally:
        server.stop()
    assert [f.path for f in files] == ["b.tif", "lot/a.tif"]
    # The looping folder is fetched once, seen to repeat an ancestor, and not followed further.
    assert pages == ["/livrable/", "/livrable/lot/", "/livrable/lot/boucle/"]


def test_a_link_loop_over_python_http_server_is_cut_one_turn_down(looping: Path, served: Served,
                                                                 tmp_path: Path) -> None:
    server = PythonHTTP(looping, tmp_path / "pyhttp").start()
    try:
        storage = open_storage(f"{server.url}/livrable/", options=AccessOptions.from_settings(
            settings_for(served, tmp_path)))
        files = storage.list_files()
        pages = [unquote(r.path) for r in server.requests()]
    finally:
        server.stop()
    assert [f.path for f in files] == ["b.tif", "lot/a.tif"]
    # Bare names prove nothing: the loop is followed until it repeats the ancestor a second time.
    assert pages == ["/livrable/", "/livrable/lot/", "/livrable/lot/boucle/", "/livrable/lot/boucle/lot/",
                     "/livrable/lot/boucle/lot/boucle/"]


def test_a_folder_listing_the_names_of_its_parent_is_crawled(served: Served, tmp_path: Path) -> None:
    root = public_folder()
    try:
        # As an archive unpacked into a folder of its own name leaves it: livrable/dalles/dalles/.
        for name in ("a.tif", "b.tif"):
            write_dalle(root / "livrable" / "dalles" / "dalles" / name, (700000.0, 6600200.0), pixels=16)
        server = PythonHTTP(root, tmp_path / "pyhttp").start()
        try:
            storage = open_storage(f"{server.url}/livrable/", options=AccessOptions.from_settings(
                settings_for(served, tmp_path)))
            files = storage.list_files()
            pages = [unquote(r.path) for r in server.requests()]
        finally:
            server.stop()
    finally:
        shutil.rmtree(root)
    assert [f.path for f in files] == ["dalles/dalles/a.tif", "dalles/dalles/b.tif"]
    assert pages == ["/livrable/", "/livrable/dalles/", "/livrable/dalles/dalles/"]


def test_an_ftp_link_loop_is_not_followed(looping: Path, served: Served, tmp_path: Path) -> None:
    server = ProFTPD(looping, tmp_path / "ftp", password=FTP_PASSWORD).start()
    try:
        storage = open_storage(f"ftp://{server.host}/livrable", options=AccessOptions.from_settings(
            settings_for(served, tmp_path)))
        with storage:
            files = storage.list_files()
        listed = [c.argument for c in server.commands() if c.command == "MLSD"]
    finally:
        server.stop()
    assert [f.path for f in files] == ["b.tif", "lot/a.tif"]
    assert listed == ["/livrable", "/livrable/lot"]  # MLSD shows the link as a link


@pytest.mark.parametrize(("setting", "value", "cause"), [
    ("PCRS_INDEXER_MAX_DEPTH", "1", "lot 2/secteur été/ is more than 1 folder levels deep (the max_depth setting)"),
    ("PCRS_INDEXER_MAX_ENTRIES", "5", "more than 5 files (the max_entries setting)"),
])
@pytest.mark.parametrize("name", ["nginx", "ftp-user", "sftp-password", "s3-anonymous"])
def test_crawl_caps_end_the_scan_with_one_line(name: str, setting: str, value: str, cause: str, served: Served,
                                               cli_env: pytest.MonkeyPatch, aws_env: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    cli_env.setenv(setting, value)
    cli_env.setenv("PCRS_INDEXER_S3_ENDPOINT_URL", served.s3.url)
    source = served.sources()[name]
    result = cli_index(source, "--out", str(tmp_path / "out"))
    storage_url = open_storage(source, options=AccessOptions.from_settings(get_settings())).url
    assert result.exit_code == 3
    assert result.stderr == f"pcrs-indexer: error: cannot list {storage_url}: {cause}\n"


# Addresses


def test_loopback_is_refused_without_the_allow_list(served: Served, cli_env: pytest.MonkeyPatch,
                                                    aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cli_env.setenv("PCRS_INDEXER_ALLOWED_NETWORKS", "")
    cli_env.setenv("PCRS_INDEXER_S3_ENDPOINT_URL", served.s3.url)
    served.nginx.reset_log()
    counts = (len(served.ftp.commands()), len(served.sshd.logins()), len(served.s3.requests()))
    refused = "127.0.0.1 is a loopback address: refused (allow it with the allowed_networks setting)"
    for name in ("nginx", "ftp-user", "sftp-password", "s3-anonymous"):
        source = served.sources()[name]
        result = cli_index(source, "--out", str(tmp_path / "out"))
        assert result.exit_code == 3, name
        url = open_storage(source, options=AccessOptions.from_settings(get_settings())).url
        assert result.stderr == f"pcrs-indexer: error: cannot list {url}: {refused}\n"
    result = cli_index(f"http://localhost:{served.nginx.port}/livrable/", "--out", str(tmp_path / "out"))
    assert result.stderr == (f"pcrs-indexer: error: cannot list http://localhost:{served.nginx.port}/livrable/: "
                             "localhost resolves to 127.0.0.1, a loopback address: refused (allow it with the "
                             "allowed_networks setting)\n")
    # Refused before connecting: no server saw anything.
    assert served.nginx.requests() == []
    assert (len(served.ftp.commands()), len(served.sshd.logins()), len(served.s3.requests())) == counts


def test_a_redirect_to_a_refused_address_is_not_followed(served: Served, tmp_path: Path) -> None:
    target = Nginx(served.root, tmp_path / "target").start()
    server = FaultyHTTP(served.root, tmp_path / "redirect", redirect=f"http://127.0.0.2:{target.port}").start()
    try:
        storage = open_storage(f"{server.url}/livrable/", options=AccessOptions.from_settings(
            settings_for(served, tmp_path, allowed_networks=["127.0.0.1/32"])))
        with pytest.raises(Exception) as failure:
            storage.list_files()
        redirected = server.requests()
    finally:
        server.stop()
        target.stop()
    assert str(failure.value) == (f"cannot list {server.url}/livrable/: 127.0.0.2 is a loopback address: refused "
                                  "(allow it with the allowed_networks setting)")
    assert [(r.path, r.status) for r in redirected] == [("/livrable/", 302)]
    assert target.requests() == []


# Credentials


def test_a_password_never_shows(served: Served, cli_env: pytest.MonkeyPatch, aws_env: pytest.MonkeyPatch,
                                caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = {FTP_PASSWORD, SFTP_PASSWORD, "wrong-Pass-5150", "http-Pass-8080", S3_KEY, S3_SECRET,
               "Endpoint-Pass-1", "http-Pass#8080", "http-Pass%238080"}
    sources = [served.sources()["ftp-user"], served.sources()["sftp-password"], served.sources()["ftps"],
               f"ftp://pcrs:wrong-Pass-5150@{served.ftp.host}/livrable",
               f"sftp://{SFTP_USER}:wrong-Pass-5150@{served.sshd.host}{served.livrable}",
               f"http://reader:http-Pass-8080@127.0.0.1:{served.nginx.port}/livrable/",
               f"http://reader:http-Pass-8080@127.0.0.1:{served.nginx.port}/absent/",
               f"http://reader:http-Pass#8080@127.0.0.1:{served.nginx.port}/livrable/",
               served.sources()["s3-keyed"],
               f"s3://{KEYED_BUCKET}/livrable?endpoint_url=http://key:Endpoint-Pass-1@127.0.0.1:{served.s3.port}"]
    cli_env.setenv("PCRS_INDEXER_TLS_CA_FILE", str(served.cert))
    cli_env.setenv("PCRS_INDEXER_S3_ENDPOINT_URL", served.s3.url)
    aws_env.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    texts = []
    for number, source in enumerate(sources):
        out = tmp_path / f"out{number}"
        result = CliRunner().invoke(main, ["-vv", "index", source, "--out", str(out), "--db",
                                           f"sqlite:///{tmp_path / 'state.sqlite'}"])
        texts += [result.stdout, result.stderr]
        texts += [p.read_text() for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert [json.loads(t)["source"] for t in texts if t.startswith('{"source": "')] == [
        f"ftp://pcrs:***@{served.ftp.host}/livrable", f"sftp://{SFTP_USER}:***@{served.sshd.host}{served.livrable}",
        f"ftps://pcrs:***@{served.ftps.host}/livrable", f"http://reader:***@127.0.0.1:{served.nginx.port}/livrable/",
        f"http://reader:***@127.0.0.1:{served.nginx.port}/livrable/",
        f"s3://{KEYED_BUCKET}/livrable?endpoint_url={served.s3.url}"]
    texts.append((tmp_path / "state.sqlite").read_bytes().decode("latin-1"))
    formatter = logging.Formatter()
    texts += [record.getMessage() + repr(record.__dict__) + (formatter.formatException(record.exc_info)
                                                             if record.exc_info else "")
              for record in caplog.records]
    leaks = [(secret, text[:200]) for text in texts for secret in secrets if secret in text]
    assert leaks == []
    assert any(text.endswith(f"pcrs-indexer: error: cannot list ftp://pcrs:***@{served.ftp.host}/livrable: FTP 530 "
                             "Login incorrect.\n") for text in texts)
    assert any(text.endswith(f"pcrs-indexer: error: s3://{KEYED_BUCKET}/livrable?endpoint_url=http://***@127.0.0.1:"
                             f"{served.s3.port}: the endpoint URL must not hold credentials (give AWS keys the usual "
                             "way)\n") for text in texts)
    assert any("Credential=***/" in text for text in texts)  # botocore's debug lines, at -vv, without the key id


@pytest.mark.parametrize("name", ["ftp-user", "ftp-list", "sftp-password", "s3-anonymous"])
def test_a_missing_folder_fails_the_scan_with_one_line(name: str, served: Served, cli_env: pytest.MonkeyPatch,
                                                       aws_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cli_env.setenv("PCRS_INDEXER_S3_ENDPOINT_URL", served.s3.url)
    cli_env.setenv("PCRS_INDEXER_TLS_CA_FILE", str(served.cert))
    source = served.sources()[name].replace("livrable", "absent")
    result = cli_index(source, "--out", str(tmp_path / "out"))
    url = open_storage(source, options=AccessOptions.from_settings(get_settings())).url
    cause = {"ftp-user": "not found (FTP 550 /absent: No such file or directory)",
             "ftp-list": "not found (FTP 550 /absent: No such file or directory)",
             "sftp-password": "not found",
             "s3-anonymous": "not found (no object under this prefix)"}[name]
    assert result.exit_code == 3
    assert result.stderr == f"pcrs-indexer: error: cannot list {url}: {cause}\n"
