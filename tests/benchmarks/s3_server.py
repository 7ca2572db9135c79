"""A small, fast S3-compatible server on loopback: one folder served as one bucket, for the benchmark.

moto's server answers about a hundred ranged GETs a second and closes every connection after one
answer, so a benchmark row behind it measures moto. This one (aiohttp's low-level server, HTTP/1.1
keep-alive) answers what the clients of the S3 row send, path-style (``/bucket/key``), any
signature or none accepted:

- ListObjectsV2 (``list-type=2``: ``prefix``, ``delimiter``, ``continuation-token``, ``start-after``,
  ``max-keys``) and ListObjects (``marker``), in S3's XML, keys in S3's order (UTF-8 bytes);
- HeadObject and GetObject, whole or with one ``Range`` (206, ``Content-Range``; 416 outside),
  with ``ETag``, ``Last-Modified``, ``Content-Length``; HeadBucket and GetBucketLocation.

The folder is indexed at start and again on ``POST /__refresh``; ``GET /__counters`` returns the
requests, raster requests (GET/HEAD of a ``.tif``/``.jp2``), body bytes and connections since
``POST /__reset``. Run it as ``python -m tests.benchmarks.s3_server ROOT BUCKET``: it prints its
port on stdout once listening.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import email.utils
import json
import sys
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote
from xml.sax.saxutils import escape

from aiohttp import web

XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")


@dataclass
class Counters:
    """What the server answered since the last reset."""

    requests: int = 0
    raster_requests: int = 0
    bytes_sent: int = 0
    connections: int = 0
    seen: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "raster_requests": self.raster_requests,
                "bytes_sent": self.bytes_sent, "connections": self.connections}


@dataclass(frozen=True)
class Obj:
    key: str
    size: int
    mtime: float
    etag: str


def _s3_time(mtime: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(mtime, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class Bucket:
    """The folder's files, sorted as S3 lists keys."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.refresh()

    def refresh(self) -> None:
        objects: dict[str, Obj] = {}
        for path in self.root.rglob("*"):
            if path.is_file():
                stat = path.stat()
                key = path.relative_to(self.root).as_posix()
                objects[key] = Obj(key, stat.st_size, stat.st_mtime, f'"{stat.st_size:x}{stat.st_mtime_ns:x}"')
        self.objects = objects
        self.keys = sorted(objects, key=lambda k: k.encode())
        self.sort_keys = [k.encode() for k in self.keys]

    def listing(self, prefix: str, delimiter: str, after: str, max_keys: int
                ) -> tuple[list[Obj], list[str], bool, str]:
        """Objects and common prefixes after `after`, at most `max_keys` of both; truncated; the last one."""
        start = bisect.bisect_right(self.sort_keys, after.encode()) if after else 0
        if delimiter and after.endswith(delimiter) and after.startswith(prefix) and len(after) > len(prefix):
            start = bisect.bisect_left(self.sort_keys, after.encode() + b"\xff")  # a common prefix: past its keys
        start = max(start, bisect.bisect_left(self.sort_keys, prefix.encode()))
        contents: list[Obj] = []
        prefixes: list[str] = []
        last = ""
        index = start
        while index < len(self.keys):
            key = self.keys[index]
            if not key.startswith(prefix):
                break
            if len(contents) + len(prefixes) >= max_keys:
                return contents, prefixes, True, last
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                common = key[:cut + len(delimiter)]
                prefixes.append(common)
                last = common
                # skip every key under this common prefix
                index = bisect.bisect_left(self.sort_keys, common.encode() + b"\xff", index)
                continue
            contents.append(self.objects[key])
            last = key
            index += 1
        return contents, prefixes, False, last


def _token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def _untoken(token: str) -> str:
    return base64.urlsafe_b64decode(token.encode()).decode()


def _error(status: int, code: str, message: str) -> web.Response:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{escape(message)}</Message></Error>")
    return web.Response(status=status, body=body.encode(), content_type="application/xml")


def _range(header: str, size: int) -> tuple[int, int] | None:
    """The first and last byte of a single ``bytes=`` range, or None if it is not satisfiable."""
    if not header.startswith("bytes=") or "," in header:
        return None
    first_s, _, last_s = header[6:].strip().partition("-")
    try:
        if not first_s:
            length = int(last_s)
            return (max(0, size - length), size - 1) if length > 0 and size else None
        first = int(first_s)
        last = min(int(last_s), size - 1) if last_s else size - 1
    except ValueError:
        return None
    return (first, last) if first <= last and first < size else None


class S3Server:
    """The bucket `name` serving `root`; `page_cap` caps every listing page (to exercise pagination)."""

    def __init__(self, root: Path, name: str, *, host: str = "127.0.0.1", port: int = 0, page_cap: int = 1000) -> None:
        self.bucket, self.name, self.host, self.port, self.page_cap = Bucket(root), name, host, port, page_cap
        self.counters = Counters()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.ServerRunner | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    async def start_async(self) -> None:
        server = web.Server(self.handle, access_log=None, handler_cancellation=False)
        self._runner = web.ServerRunner(server, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        sockets = site._server.sockets if site._server else []  # noqa: SLF001 - the bound port
        self.port = sockets[0].getsockname()[1]

    def start(self) -> S3Server:
        """Serve from an event loop in a thread of this process (tests)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="s3-server", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.start_async(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._loop and self._runner:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        counters = self.counters
        transport = request.transport
        if transport is not None and transport not in counters.seen:
            counters.seen.add(transport)
            counters.connections += 1
        path = request.path
        if path.startswith("/__"):
            return self._control(request.method, path)
        counters.requests += 1
        bucket, _, key = path.lstrip("/").partition("/")
        if bucket != self.name:
            return _error(404, "NoSuchBucket", "The specified bucket does not exist")
        if not key:
            return self._bucket(request)
        key = unquote(key)
        obj = self.bucket.objects.get(key)
        if key.endswith(RASTER_SUFFIXES) and request.method in ("GET", "HEAD"):
            counters.raster_requests += 1
        if request.method not in ("GET", "HEAD"):
            return _error(405, "MethodNotAllowed", "The specified method is not allowed")
        if obj is None:
            return _error(404, "NoSuchKey", "The specified key does not exist.")
        return self._object(request, obj)

    def _control(self, method: str, path: str) -> web.Response:
        if path == "/__counters":
            return web.Response(body=json.dumps(self.counters.as_dict()).encode(), content_type="application/json")
        if method == "POST" and path == "/__reset":
            self.counters.requests = self.counters.raster_requests = self.counters.bytes_sent = 0
            self.counters.connections = 0
            self.counters.seen = weakref.WeakSet()
            return web.Response(text="ok")
        if method == "POST" and path == "/__refresh":
            self.bucket.refresh()
            return web.Response(text=str(len(self.bucket.keys)))
        return _error(404, "NotFound", path)

    def _object(self, request: web.BaseRequest, obj: Obj) -> web.Response:
        headers = {"ETag": obj.etag, "Last-Modified": email.utils.formatdate(obj.mtime, usegmt=True),
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        first, last, status = 0, obj.size - 1, 200
        wanted = request.headers.get("Range")
        if wanted:
            span = _range(wanted, obj.size)
            if span is None:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{obj.size}"})
            first, last, status = span[0], span[1], 206
            headers["Content-Range"] = f"bytes {first}-{last}/{obj.size}"
        length = last - first + 1
        if request.method == "HEAD":
            headers["Content-Length"] = str(length)
            return web.Response(status=status, headers=headers)
        with open(self.bucket.root / obj.key, "rb") as handle:
            handle.seek(first)
            body = handle.read(length)
        self.counters.bytes_sent += len(body)
        return web.Response(status=status, headers=headers, body=body)

    def _bucket(self, request: web.BaseRequest) -> web.Response:
        query = request.query
        if request.method == "HEAD":
            return web.Response(headers={"x-amz-bucket-region": "us-east-1"})
        if "location" in query:
            return self._xml(f'<LocationConstraint xmlns="{XMLNS}"></LocationConstraint>')
        if request.method != "GET":
            return _error(405, "MethodNotAllowed", "The specified method is not allowed")
        return self._list(query)

    def _list(self, query: Any) -> web.Response:
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
        try:
            max_keys = max(0, min(int(query.get("max-keys", "1000")), 1000))
        except ValueError:
            return _error(400, "InvalidArgument", "max-keys")
        v2 = query.get("list-type") == "2"
        token = query.get("continuation-token", "")
        try:
            after = _untoken(token) if token else query.get("start-after" if v2 else "marker", "")
        except ValueError:
            return _error(400, "InvalidArgument", "The continuation token provided is incorrect")
        contents, prefixes, truncated, last = self.bucket.listing(prefix, delimiter, after,
                                                                  min(max_keys, self.page_cap))
        parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="{XMLNS}">',
                 f"<Name>{escape(self.name)}</Name><Prefix>{escape(prefix)}</Prefix>"]
        if v2:
            if token:
                parts.append(f"<ContinuationToken>{escape(token)}</ContinuationToken>")
            if truncated:
                parts.append(f"<NextContinuationToken>{_token(last)}</NextContinuationToken>")
            if "start-after" in query:
                parts.append(f"<StartAfter>{escape(query['start-after'])}</StartAfter>")
            parts.append(f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount>")
        else:
            parts.append(f"<Marker>{escape(query.get('marker', ''))}</Marker>")
            if truncated:
                parts.append(f"<NextMarker>{escape(last)}</NextMarker>")
        parts.append(f"<MaxKeys>{max_keys}</MaxKeys>")
        if delimiter:
            parts.append(f"<Delimiter>{escape(delimiter)}</Delimiter>")
        parts.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
        parts.extend(f"<Contents><Key>{escape(o.key)}</Key><LastModified>{_s3_time(o.mtime)}</LastModified>"
                     f"<ETag>{escape(o.etag)}</ETag><Size>{o.size}</Size><StorageClass>STANDARD</StorageClass>"
                     "</Contents>" for o in contents)
        parts.extend(f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in prefixes)
        parts.append("</ListBucketResult>")
        return self._xml("".join(parts))

    @staticmethod
    def _xml(body: str) -> web.Response:
        return web.Response(body=body.encode(), content_type="application/xml")


def main(argv: list[str]) -> int:
    """Serve ``ROOT`` as bucket ``BUCKET`` until killed; print the port once listening."""
    root, name = Path(argv[0]), argv[1]

    async def serve() -> None:
        server = S3Server(root, name)
        await server.start_async()
        sys.stdout.write(f"{server.port}\n")
        sys.stdout.flush()
        await asyncio.Event().wait()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
