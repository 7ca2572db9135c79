"""The benchmark's FTP, SFTP and S3 storages, each behind the delay line, and their references and peers.

Every storage serves the same generated livrables (`benchmark.generate_livrable`) from a real
server on loopback, reached through a `delay_line.DelayLine` run in a thread of the benchmark's
own process (idle while a child run measures):

- FTP: ProFTPD, at most 2 connections per client, control and data connections across the line
  (PASV/EPSV answers rewritten). Requests are the FTP commands ProFTPD logged; bytes, what the
  line carried to the client.
- SFTP: OpenSSH's ``internal-sftp``, logging in with a key (the system user's password is
  shared). Its requests are not counted (a forced internal-sftp session
  logs none); bytes, what the line carried.
- S3: `s3_server` serving the livrables folder as one bucket, keep-alive. Requests are what it counted.

The references read as the current PCRS scanner does: FTP, one dalle at a time, GDAL reading
through 16 KiB blocks (as ``/vsicurl/`` does), each block through a fresh login (connect, USER,
PASS, TYPE, PASV, REST, RETR); SFTP, one cached connection behind a small HTTP gateway, each dalle
opened by GDAL's default ``/vsicurl/`` on the gateway, 8 at a time. The peers are what a user who
knows the tools would run: SFTP, rasterio opening each dalle through sshfs's file objects (fsspec,
asyncssh; defaults), 8 threads; S3, GDAL tuned on ``/vsis3/`` (`benchmark.GDAL_TUNED`).
"""

from __future__ import annotations

import asyncio
import ftplib
import io
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.benchmarks.delay_line import DelayLine, LineCounters

BLOCK = 16384
"""GDAL's ``/vsicurl/`` block: the reference reads whole blocks, as GDAL would."""
BUCKET = "pcrs-bench"
FTP_USER, FTP_PASSWORD = "pcrs", "ftp-secret"


class LineThread:
    """Delay lines served by an event loop in a thread of this process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="delay-lines", daemon=True)
        self.thread.start()
        self.lines: list[DelayLine] = []

    def add(self, target: tuple[str, int], latency_s: float, *, ftp: bool = False) -> DelayLine:
        """A new line to `target`, listening once this returns."""
        line = DelayLine(target, latency_s, ftp=ftp)
        asyncio.run_coroutine_threadsafe(line.start(), self.loop).result(10)
        self.lines.append(line)
        return line

    def close(self) -> None:
        """Close every line and stop the loop."""
        for line in self.lines:
            asyncio.run_coroutine_threadsafe(line.aclose(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _reset_line(counters: LineCounters) -> None:
    counters.connections = counters.bytes_up = counters.bytes_down = 0


class _LogCount:
    """Lines a server appended to its log since the last `reset`, read once the log has settled."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def reset(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def lines(self) -> list[str]:
        from tests.servers.servers import settled

        def read() -> int:
            return self.path.stat().st_size if self.path.exists() else 0

        settled(read, still_s=0.3, timeout_s=30)
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            return log.read().decode("utf-8", "replace").splitlines()


class FTPStorage:
    """ProFTPD over the livrables (2 connections per client), behind the delay line."""

    name = "ftp"

    def __init__(self, livrables: Path, workdir: Path, lines: LineThread, latency_s: float) -> None:
        from tests.servers.servers import ProFTPD

        self.livrables = livrables
        self.server = ProFTPD(livrables, workdir, user=FTP_USER, password=FTP_PASSWORD, max_clients=2).start()
        self.line = lines.add(("127.0.0.1", self.server.port), latency_s, ftp=True)
        self.log = _LogCount(self.server.log)

    def url(self, size: int) -> str:
        """Our scan's URL of a livrable."""
        return f"ftp://{FTP_USER}:{FTP_PASSWORD}@127.0.0.1:{self.line.port}/livrable-{size}"

    def reset(self) -> None:
        """Counters to zero."""
        self.log.reset()
        _reset_line(self.line.counters)

    def stats(self) -> dict[str, Any]:
        """Commands, transfers and bytes since the reset."""
        lines = self.log.lines()
        return {"requests": len(lines), "raster_requests": sum(1 for line in lines if "|RETR|" in line),
                "logins": sum(1 for line in lines if re.search(r"\|PASS\|230\|", line)),
                "bytes_sent": self.line.counters.bytes_down, "line": self.line.counters.as_dict()}

    def stop(self) -> None:
        """Stop the server."""
        self.server.stop()


class SFTPStorage:
    """OpenSSH's internal-sftp, behind the delay line."""

    name = "sftp"

    def __init__(self, livrables: Path, workdir: Path, lines: LineThread, latency_s: float) -> None:
        from tests.servers.servers import SFTP_USER, SSHD

        self.livrables = livrables
        self.user = SFTP_USER
        self.server = SSHD(workdir).start()
        self.line = lines.add(("127.0.0.1", self.server.port), latency_s)
        self.log = _LogCount(self.server.stderr)

    def url(self, size: int) -> str:
        """Our scan's URL of a livrable."""
        return f"sftp://{self.user}@127.0.0.1:{self.line.port}{self.livrables}/livrable-{size}"

    def reset(self) -> None:
        """Counters to zero."""
        self.log.reset()
        _reset_line(self.line.counters)

    def stats(self) -> dict[str, Any]:
        """Logins and bytes since the reset (OpenSSH logs no SFTP request of a forced internal-sftp session)."""
        lines = self.log.lines()
        return {"requests": None, "raster_requests": None,
                "logins": sum(1 for line in lines if "Accepted " in line),
                "bytes_sent": self.line.counters.bytes_down, "line": self.line.counters.as_dict()}

    def stop(self) -> None:
        """Stop the server."""
        self.server.stop()


class S3Storage:
    """The livrables folder served as one bucket by `s3_server` (a child process), behind the delay line.

    Not moto: its server answers about a hundred ranged GETs a second and closes every connection
    after one answer, so the row measured moto rather than the clients."""

    name = "s3"

    def __init__(self, livrables: Path, workdir: Path, lines: LineThread, latency_s: float) -> None:
        import subprocess
        import sys

        workdir.mkdir(parents=True, exist_ok=True)
        self.log = open(workdir / "s3-server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([sys.executable, "-m", "tests.benchmarks.s3_server", str(livrables), BUCKET],
                                        stdout=subprocess.PIPE, stderr=self.log, text=True)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline() or 0)
        if not self.port:
            raise RuntimeError(f"the S3 server did not start (see {workdir / 's3-server.log'})")
        self.line = lines.add(("127.0.0.1", self.port), latency_s)

    @property
    def endpoint(self) -> str:
        """The endpoint across the line: ``127.0.0.1:port``."""
        return f"127.0.0.1:{self.line.port}"

    def _control(self, path: str, method: str = "POST") -> bytes:
        import urllib.request

        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        with urllib.request.urlopen(request, timeout=60) as answer:
            return bytes(answer.read())

    def upload(self, size: int) -> None:
        """The server indexes the livrables folder again (its files are served in place)."""
        self._control("/__refresh")

    def url(self, size: int) -> str:
        """Our scan's URL of a livrable."""
        return f"s3://{BUCKET}/livrable-{size}?endpoint_url=http://{self.endpoint}"

    def reset(self) -> None:
        """Counters to zero."""
        self._control("/__reset")
        _reset_line(self.line.counters)

    def stats(self) -> dict[str, Any]:
        """Requests the server counted, and bytes the line carried, since the reset."""
        counted = json.loads(self._control("/__counters", "GET"))
        return {"requests": counted["requests"], "raster_requests": counted["raster_requests"],
                "bytes_sent": self.line.counters.bytes_down, "line": self.line.counters.as_dict()}

    def stop(self) -> None:
        """Stop the server."""
        self.process.terminate()
        self.process.wait(10)
        if self.process.stdout:
            self.process.stdout.close()
        self.log.close()


# --------------------------------------------------------------------------------------------
# References and peers, each run in a child process (`benchmark.run_child`)
# --------------------------------------------------------------------------------------------


class BlockFile(io.RawIOBase):
    """A read-only file of known size read in `BLOCK`-sized blocks, each fetched once by `fetch(start, length)`."""

    def __init__(self, size: int, fetch: Any) -> None:
        self.size = size
        self.fetch = fetch
        self.pos = 0
        self.blocks: dict[int, bytes] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def _fetch_block(self, index: int) -> bytes:
        """Block `index`, fetched again when it comes short (at most 3 times), else an `OSError`."""
        length = min(BLOCK, self.size - index * BLOCK)
        for _ in range(3):
            block = bytes(self.fetch(index * BLOCK, length))
            if len(block) == length:
                return block
        raise OSError(f"block {index} came short: {len(block)} of {length} bytes, 3 times")

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), max(self.size - self.pos, 0))
        out = bytearray()
        while len(out) < want:
            index = (self.pos + len(out)) // BLOCK
            block = self.blocks.get(index)
            if block is None:
                block = self.blocks[index] = self._fetch_block(index)
            start = self.pos + len(out) - index * BLOCK
            out += block[start:start + want - len(out)]
        buffer[:len(out)] = out
        self.pos += len(out)
        return len(out)


def _gdal_meta(src: Any) -> dict[str, Any]:
    crs = src.crs
    return {"width": src.width, "height": src.height, "count": src.count, "epsg": crs.to_epsg() if crs else None,
            "bounds": list(src.bounds)}


def fresh_login_read(host: str, port: int, path: str, start: int, length: int) -> bytes:
    """`length` bytes at `start` through a new FTP session: connect, USER, PASS, TYPE, PASV, REST, RETR."""
    ftp = ftplib.FTP()
    ftp.connect(host, port, timeout=60)
    try:
        ftp.login(FTP_USER, FTP_PASSWORD)
        ftp.voidcmd("TYPE I")
        with ftp.transfercmd(f"RETR {path}", rest=start) as data:
            chunks = []
            got = 0
            while got < length:
                chunk = data.recv(length - got)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        return b"".join(chunks)
    finally:
        ftp.close()


def _ftp_walk(ftp: ftplib.FTP, folder: str) -> Iterator[tuple[str, int]]:
    for name, facts in ftp.mlsd(folder, facts=["type", "size"]):
        path = f"{folder}/{name}"
        if facts.get("type") == "dir":
            yield from _ftp_walk(ftp, path)
        elif facts.get("type") == "file" and name.endswith((".tif", ".jp2")):
            yield path, int(facts["size"])


def _fresh_login_opener(host: str, port: int, path: str, size: int) -> Any:
    """An opener for rasterio: `path` as a `BlockFile` whose blocks each come through a fresh login."""

    def fetch(start: int, length: int) -> bytes:
        return fresh_login_read(host, port, path, start, length)

    def opener(asked: str, mode: str = "rb") -> BlockFile:
        if asked != path:
            raise FileNotFoundError(asked)  # GDAL's probes for side files: not on the server
        return BlockFile(size, fetch)

    return opener


def run_ftp_reference(params: dict[str, Any]) -> dict[str, Any]:
    """The current scanner's FTP way: list on one login, then each dalle's blocks through fresh logins."""
    import rasterio

    from tests.benchmarks.benchmark import _cpu_s, peak_rss_mb

    host, port = "127.0.0.1", int(params["port"])
    cpu0 = _cpu_s(0)
    started = time.perf_counter()
    ftp = ftplib.FTP()
    ftp.connect(host, port, timeout=60)
    ftp.login(FTP_USER, FTP_PASSWORD)
    listed_files = sorted(_ftp_walk(ftp, f"/{params['folder']}"))
    ftp.quit()
    files = listed_files[:params.get("limit") or None]
    listed = time.perf_counter()
    dalles = errors = 0
    last_error = ""
    for path, size in files:
        opener = _fresh_login_opener(host, port, path, size)
        try:
            with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(path, opener=opener) as src:
                _gdal_meta(src)
            dalles += 1
        except Exception as exc:  # noqa: BLE001 - the reference counts what it could not open
            errors += 1
            last_error = str(exc)[:200]
    return {"dalles": dalles, "errors": errors, "error": last_error, "sampled": len(files) < len(listed_files),
            "wall_s": time.perf_counter() - started, "list_s": listed - started,
            "cpu_s": _cpu_s(0) - cpu0, "rss_mb": peak_rss_mb(), "read": len(files), "reused": 0}


def _sftp_connect(params: dict[str, Any]) -> Any:
    import asyncssh

    return asyncssh.connect("127.0.0.1", int(params["port"]), username=params["user"], known_hosts=None,
                            client_keys=[params["key"]])


def run_sftp_gateway_reference(params: dict[str, Any]) -> dict[str, Any]:
    """The current scanner's SFTP way: one cached SFTP connection behind an HTTP gateway, GDAL's default
    ``/vsicurl/`` on the gateway, 8 processes."""
    from tests.benchmarks.benchmark import _cpu_s, peak_rss_mb, run_gdal_pool

    gateway = SFTPGateway(params)
    cpu0 = _cpu_s(0)
    started = time.perf_counter()
    gateway.start()
    try:
        files = gateway.walk()
        listed = time.perf_counter()
        pool = run_gdal_pool([f"/vsicurl/http://127.0.0.1:{gateway.port}{path}" for path, _ in files],
                             int(params.get("processes", 8)), {})
    finally:
        gateway.stop()
    return {**pool, "wall_s": time.perf_counter() - started, "list_s": listed - started,
            "cpu_s": pool["cpu_s"] + _cpu_s(0) - cpu0, "rss_mb": pool["rss_mb"] + peak_rss_mb(),
            "read": len(files), "reused": 0}


class SFTPGateway:
    """An HTTP server in a thread answering HEAD and ranged GET of files from one cached SFTP connection."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.sftp: Any = None
        self.connection: Any = None
        self.server: Any = None

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(60)

    async def _start(self) -> None:
        from aiohttp import web

        self.connection = await _sftp_connect(self.params)
        self.sftp = await self.connection.start_sftp_client()
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.server = runner
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _handle(self, request: Any) -> Any:
        import asyncssh
        from aiohttp import web

        path = "/" + request.match_info["path"]
        try:
            attrs = await self.sftp.stat(path)
        except asyncssh.SFTPError:
            return web.Response(status=404)
        if attrs.type != asyncssh.FILEXFER_TYPE_REGULAR:
            return web.Response(status=404)  # no listing pages: GDAL then opens the file alone
        size = attrs.size
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(size)})
        match = re.match(r"bytes=(\d+)-(\d*)", request.headers.get("Range", ""))
        start, end = (int(match[1]), min(int(match[2] or size - 1), size - 1)) if match else (0, size - 1)
        async with self.sftp.open(path, "rb") as f:
            await f.seek(start)
            body = await f.read(end - start + 1)
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return web.Response(status=206 if match else 200, body=body, headers=headers)

    def walk(self) -> list[tuple[str, int]]:
        return asyncio.run_coroutine_threadsafe(self._walk(self.params["folder"]), self.loop).result(3600)

    async def _walk(self, folder: str) -> list[tuple[str, int]]:
        out = []
        for entry in await self.sftp.readdir(folder):
            if entry.filename in (".", ".."):
                continue
            path = f"{folder}/{entry.filename}"
            if entry.attrs.type == 2:  # a folder
                out.extend(await self._walk(path))
            elif entry.filename.endswith((".tif", ".jp2")):
                out.append((path, entry.attrs.size))
        return sorted(out)

    def stop(self) -> None:
        async def close() -> None:
            if self.server is not None:
                await self.server.cleanup()
            if self.connection is not None:
                self.connection.close()
                await self.connection.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def run_sftp_peer(params: dict[str, Any]) -> dict[str, Any]:
    """sshfs's defaults: rasterio opening each dalle through an sshfs file object, 8 threads."""
    from concurrent.futures import ThreadPoolExecutor

    import rasterio
    from sshfs import SSHFileSystem

    from tests.benchmarks.benchmark import _cpu_s, peak_rss_mb

    cpu0 = _cpu_s(0)
    started = time.perf_counter()
    fs = SSHFileSystem("127.0.0.1", port=int(params["port"]), username=params["user"], known_hosts=None,
                       client_keys=[params["key"]])
    files = sorted(p for p in fs.find(params["folder"]) if p.endswith((".tif", ".jp2")))
    listed = time.perf_counter()

    def read(path: str) -> bool:
        try:
            with rasterio.Env(GDAL_PAM_ENABLED="NO"), rasterio.open(path, opener=fs.open) as src:
                _gdal_meta(src)
            return True
        except Exception:  # noqa: BLE001 - the peer counts what it could not open
            return False

    with ThreadPoolExecutor(int(params.get("threads", 8))) as pool:
        results = list(pool.map(read, files))
    return {"dalles": sum(results), "errors": len(results) - sum(results), "wall_s": time.perf_counter() - started,
            "list_s": listed - started, "cpu_s": _cpu_s(0) - cpu0, "rss_mb": peak_rss_mb(), "read": len(files),
            "reused": 0}


def s3_gdal_env(endpoint: str) -> dict[str, str]:
    """GDAL's configuration for anonymous ``/vsis3/`` on an HTTP endpoint with path-style URLs."""
    return {"AWS_S3_ENDPOINT": endpoint, "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
            "AWS_NO_SIGN_REQUEST": "YES", "AWS_REGION": "us-east-1"}


def s3_listing(endpoint: str, prefix: str) -> list[str]:
    """Every dalle key under `prefix`, listed anonymously with boto3."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1",
                          config=Config(signature_version=UNSIGNED))
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        keys.extend(item["Key"] for item in page.get("Contents", []) if item["Key"].endswith((".tif", ".jp2")))
    return sorted(keys)


def public_root(path: Path) -> None:
    """Let the servers that drop root privileges (the FTP and SFTP sessions) read below `path`."""
    os.chmod(path, path.stat().st_mode | 0o005)
    for folder in path.parents:
        if folder.stat().st_mode & 0o001 == 0:
            raise RuntimeError(f"{folder} is not open to other users: the FTP and SFTP servers could not read "
                               f"{path}; choose a --workdir elsewhere")
