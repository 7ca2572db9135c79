"""The storage routes of the PCRS site's scanner (pcrs-scanner's contract), over the store.

The site attaches a livrable's stockage with ``POST /storages`` and reads the storage document
(``GET /storages/{id}``) shaped as pcrs-scanner's: its scan state (``scan``), its last error and
the result of its last successful scan (``result``, with the ``raster`` summary and the livrable's
emprise as ``envelope``). The document is made by plain functions from what the store says
(`storage_document`), testable without a server; the routes only read, call the core and answer.

Where pcrs-scanner errs, this does not: a storage posted again answers its document (200; the
scanner answers 409 while a scan is pending), with no second scan queued.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, unquote, urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from pyproj import CRS
from sqlalchemy import Engine, case, desc, func, literal_column, select

from indexer.api.auth import Unavailable, admin_header, download_secret, issue_download_token, require_admin
from indexer.api.deps import ApiState, get_state
from indexer.api.docs import errors
from indexer.api.runner import dispatch
from indexer.errors import ConfigError, ForbiddenAddress, StorageNotFound
from indexer.models import ACTIVE_SCANS, ScanStatus, Trigger
from indexer.projet import Projet, json_depth, stockage_source
from indexer.service import queueing
from indexer.storages import AccessOptions, open_storage
from indexer.storages.access import mask_url
from indexer.storages.addresses import AddressPolicy
from indexer.store import catalog, queries, scans
from indexer.store.engine import aware
from indexer.store.schema import crs_table, records, scan_jobs, storages
from indexer.store.schema import scans as scans_table

router = APIRouter(tags=["storages"])

TYPES = ("http", "ftp", "sftp", "s3")
"""The kinds of storage ``POST /storages`` accepts."""
SCHEMES = {"http": ("http", "https"), "ftp": ("ftp", "ftps"), "sftp": ("sftp",), "s3": ("s3",)}
"""The URL schemes each kind of storage may be reached by over the API: never a local folder of the server."""
MAX_STORAGE_BODY = 64 * 1024
"""Largest body of ``POST /storages``."""
RESOLVE_S = 5.0
"""Deadline of the DNS resolution checking a posted storage's host against the address policy."""
MAX_ID_DIGITS = 18


# --- The document, from what the store says -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScanFacts:
    """A scan as the store keeps it."""

    id: int
    status: str
    step: str | None
    started_at: datetime | None
    heartbeat_at: datetime | None
    listed: int
    read: int
    reused: int
    skipped: int
    to_read: int | None
    duration_s: float | None
    error: str | None


@dataclass(frozen=True, slots=True)
class StorageFacts:
    """A storage as the store keeps it, with its latest scan and its last successful one."""

    id: int
    url: str
    """Its identity: the root URL, the password masked."""
    source: str | None
    """The URL it is opened with when it has no credential."""
    sealed: bool
    last_success_at: datetime | None
    last_error: str | None
    latest: ScanFacts | None
    succeeded: ScanFacts | None


@dataclass(frozen=True, slots=True)
class Group:
    """Records of a storage alike in what its raster summary looks at, counted."""

    status: str
    """``valid`` or ``skipped``."""
    mime: str | None
    compression: str | None
    epsg: int | None
    bands: tuple[str, ...]
    crs: str | None
    """The CRS's name."""
    count: int
    size: int
    read: int
    """How many of them the last successful scan read (the others it reused)."""


@dataclass(frozen=True, slots=True)
class Contents:
    """What the records of a storage's last successful scan hold, summed up for its ``result``."""

    groups: tuple[Group, ...] = ()
    directories: int = 0
    """Folders holding a raster file."""
    broken_sample: str | None = None
    """The detail of one skipped file."""

    def valid(self) -> list[Group]:
        """The groups of valid dalles."""
        return [g for g in self.groups if g.status == "valid"]

    def count(self, valid: bool) -> int:
        """Valid dalles, or skipped raster files."""
        return sum(g.count for g in self.groups if (g.status == "valid") == valid)


FORMATS = {"image/tiff": "geotiff", "image/jp2": "jpeg2000"}
"""pcrs-scanner's ``format`` of each dalle MIME type."""
_BAND = re.compile(r"^(?P<color>.*)\((?P<type>[^()]*)\)$")


def iso(moment: datetime | None) -> str | None:
    """A time as pcrs-scanner writes it (``2024-05-01T12:00:00.000Z``)."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def scan_status(status: str | None) -> str:
    """pcrs-scanner's scan status of a scan of the store: ``pending``, ``processing`` or ``idle``."""
    if status == ScanStatus.QUEUED:
        return "pending"
    if status in ACTIVE_SCANS:
        return "processing"
    return "idle"


STEPS = {"listing": "listing", "reading": "analyzing", "aggregating": "aggregating"}
"""pcrs-scanner's step of each step of a scan being processed."""


def scan_document(latest: ScanFacts | None, last_error: str | None) -> dict[str, Any]:
    """The ``scan`` member: status, step, times and counts of the storage's latest scan."""
    status = scan_status(latest.status if latest else None)
    processing = status == "processing" and latest is not None
    progress = None
    if latest is not None:
        to_read = latest.to_read
        progress = {"files": latest.listed, "directories": None,
                    "dataFiles": None if to_read is None else to_read + latest.reused,
                    "notModifiedDataFiles": latest.reused, "analyzedDataFiles": latest.read - latest.skipped,
                    "brokenDataFiles": latest.skipped}
    return {
        "status": status,
        "step": STEPS.get(latest.step or "") if processing and latest else None,
        "queuedAt": iso(latest.started_at) if status == "pending" and latest else None,
        "processingSince": iso(latest.started_at) if processing and latest else None,
        "heartbeat": iso(latest.heartbeat_at) if processing and latest else None,
        "progress": progress,
        "lastError": last_error,
    }


def folder(path: str) -> str:
    """The folder of a path below the storage root ('' for the root)."""
    return path.rsplit("/", 1)[0] if "/" in path else ""


_CRS_NAMES: dict[str, str | None] = {}


def _crs_name(wkt: str) -> str | None:
    if wkt not in _CRS_NAMES:
        try:
            _CRS_NAMES[wkt] = CRS.from_wkt(wkt).name
        except Exception:  # noqa: BLE001 - a name is only shown
            _CRS_NAMES[wkt] = None
    return _CRS_NAMES[wkt]


def band_document(n: int, band: str) -> dict[str, Any]:
    """A band as pcrs-scanner describes it, from ours (``Red(Byte)``)."""
    match = _BAND.match(band)
    color, kind = (match["color"], match["type"]) if match else (band, None)
    return {"id": n, "colorInterpretation": color or None, "dataType": kind or None}


def _common(values: set[Any]) -> Any:
    return next(iter(values)) if len(values) == 1 else None


def raster_document(contents: Contents, envelope: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``raster`` member: the dalles' count, size and common format, compression, projection and bands."""
    valid = contents.valid()
    if not valid:
        return None
    mime = _common({g.mime for g in valid})
    projection = _common({(g.crs, f"EPSG:{g.epsg}" if g.epsg else None) for g in valid})
    bands = _common({g.bands for g in valid})
    return {
        "numRasterFiles": sum(g.count for g in valid),
        "sizeRasterFiles": sum(g.size for g in valid),
        "format": FORMATS.get(mime) if mime else None,
        "compression": _common({g.compression for g in valid}),
        "projection": {"name": projection[0], "code": projection[1]} if projection else None,
        "bands": [band_document(n, b) for n, b in enumerate(bands, 1)] if bands is not None else None,
        "envelope": envelope,
    }


def result_document(facts: StorageFacts, contents: Contents, envelope: dict[str, Any] | None
                    ) -> dict[str, Any] | None:
    """The ``result`` member: the last successful scan's counts and raster summary; None before any."""
    scan = facts.succeeded
    if scan is None or facts.last_success_at is None:
        return None
    return {
        "lastSuccessfulScan": iso(facts.last_success_at),
        "files": scan.listed,
        "directories": contents.directories,
        "dataFiles": contents.count(valid=True) + contents.count(valid=False),
        "notModifiedDataFiles": sum(g.count - g.read for g in contents.valid()),
        "analyzedDataFiles": sum(g.read for g in contents.valid()),
        "brokenDataFiles": contents.count(valid=False),
        "brokenDataSampleError": contents.broken_sample,
        "duration": scan.duration_s,
        "raster": raster_document(contents, envelope),
    }


def storage_type(url: str) -> str:
    """The stockage kind of a storage URL: http, ftp, sftp, s3 (or the local scheme)."""
    scheme = urlsplit(url).scheme.lower()
    return {"https": "http", "ftps": "ftp"}.get(scheme, scheme or "file")


def storage_params(url: str, sealed: bool) -> dict[str, Any]:
    """A storage's parameters, from the URL it is opened with, its password shown as ``***``."""
    parts = urlsplit(url)
    kind = storage_type(url)
    if kind == "s3":
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        return {"bucket": parts.hostname, "prefix": unquote(parts.path.strip("/")),
                "endpoint_url": query.get("endpoint_url"), "region": query.get("region")}
    if kind in ("ftp", "sftp"):
        params: dict[str, Any] = {"host": parts.hostname, "port": parts.port, "startPath": unquote(parts.path) or "/",
                                  "username": unquote(parts.username) if parts.username else None,
                                  "password": "***" if parts.password or sealed else None}
        if kind == "ftp":
            params["secure"] = parts.scheme.lower() == "ftps"
        return params
    return {"url": mask_url(url)}


def storage_document(facts: StorageFacts, contents: Contents, envelope: dict[str, Any] | None,
                     admin: bool) -> dict[str, Any]:
    """The storage document of ``GET /storages/{id}``; ``params`` only for the admin, the password masked."""
    document: dict[str, Any] = {"_id": str(facts.id), "type": storage_type(facts.url)}
    if admin:
        document["params"] = storage_params(facts.source or facts.url, facts.sealed)
    document["scan"] = scan_document(facts.latest, facts.last_error)
    document["lastError"] = facts.last_error
    document["result"] = result_document(facts, contents, envelope)
    return document


# --- Reading the store ----------------------------------------------------------------------------------------


def parse_id(text: str) -> int:
    """A storage id from a path; `StorageNotFound` for anything but a positive decimal number."""
    if not (text.isascii() and text.isdigit() and len(text) <= MAX_ID_DIGITS and int(text) > 0):
        raise StorageNotFound("Invalid storage identifier")
    return int(text)


def _scan_facts(row: Any) -> ScanFacts | None:
    if row is None:
        return None
    return ScanFacts(row.id, row.status, row.step, aware(row.started_at), aware(row.heartbeat_at), row.listed,
                     row.read, row.reused, row.skipped, row.to_read, row.duration_s, row.error)


def read_facts(engine: Engine, storage: int) -> StorageFacts:
    """What the store says of a storage; `StorageNotFound` for an unknown one."""
    sc = scans_table
    query = (select(sc, scan_jobs.c.to_read).select_from(sc.outerjoin(scan_jobs, scan_jobs.c.scan_id == sc.c.id))
             .where(sc.c.storage_id == storage).order_by(desc(sc.c.id)).limit(1))
    with engine.connect() as conn:
        row = conn.execute(select(storages).where(storages.c.id == storage)).first()
        if row is None:
            raise StorageNotFound("Storage not found")
        latest = conn.execute(query).first()
        succeeded = conn.execute(query.where(sc.c.status == ScanStatus.SUCCEEDED)).first()
    return StorageFacts(row.id, row.url, row.source, row.secret is not None, aware(row.last_success_at),
                        row.last_error, _scan_facts(latest), _scan_facts(succeeded))


def read_contents(engine: Engine, storage: int, scan: int) -> Contents:
    """Sum up the records of a storage whose last successful scan is `scan`: grouped in the store (JSON
    fields extracted there), the paths read for their folders only."""
    meta, r = records.c.meta, records.c
    keys = (r.status, meta["mime"].as_string(), meta["compression"].as_string(), meta["epsg"].as_integer(),
            meta["bands"].as_string(), r.crs_id)
    query = (select(*keys, func.count(), func.coalesce(func.sum(r.size), 0),
                    func.coalesce(func.sum(case((r.scan_id == scan, 1), else_=0)), 0))
             .where(r.storage_id == storage).group_by(*(literal_column(str(n)) for n in range(1, len(keys) + 1))))
    with engine.connect() as conn:
        wkts = {row.id: row.wkt for row in conn.execute(select(crs_table))}
        groups = sorted((
            Group(status, mime, compression, epsg, tuple(json.loads(bands)) if bands else (),
                  _crs_name(wkts[crs]) if crs in wkts else None, int(count), int(size), int(read))
            for status, mime, compression, epsg, bands, crs, count, size, read in conn.execute(query)), key=repr)
        folders = {folder(path) for path in conn.execution_options(yield_per=10000).execute(
            select(r.path).where(r.storage_id == storage)).scalars()}
        sample = conn.execute(select(r.detail).where(r.storage_id == storage, r.status != "valid")
                              .order_by(r.path).limit(1)).scalar()
    return Contents(tuple(groups), len(folders), sample)


class _Summaries:
    """The contents and envelope of each storage's last successful scan, kept while it stays the last (its
    records and outputs do not change until another scan succeeds)."""

    def __init__(self, size: int = 256) -> None:
        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple[str, int, int], tuple[Contents, dict[str, Any] | None]] = OrderedDict()
        self._size = size

    def get(self, engine: Engine, out_dir: Path, storage: int, scan: ScanFacts | None
            ) -> tuple[Contents, dict[str, Any] | None]:
        if scan is None:
            return Contents(), None
        key = (engine.url.render_as_string(), storage, scan.id)  # one store per server, several in tests
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        found = read_contents(engine, storage, scan.id), read_envelope(out_dir, storage)
        with self._lock:
            self._kept[key] = found
            while len(self._kept) > self._size:
                self._kept.popitem(last=False)
        return found


SUMMARIES = _Summaries()

MAX_ENVELOPE_BYTES = 64 * 1024 * 1024
"""Largest ``livrables.geojson`` read for a storage's envelope."""


def read_envelope(out_dir: Path, storage: int) -> dict[str, Any] | None:
    """The emprise of a storage's published outputs (the geometry of its ``livrables.geojson``), None without."""
    path = out_dir / str(storage) / "livrables.geojson"
    try:
        if path.stat().st_size > MAX_ENVELOPE_BYTES:
            return None
        collection = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    features = collection.get("features") or [] if isinstance(collection, dict) else []
    geometry = features[0].get("geometry") if features and isinstance(features[0], dict) else None
    return geometry if isinstance(geometry, dict) else None


def document_of(state: ApiState, storage: int, admin: bool) -> dict[str, Any]:
    """The storage document of a storage of the store."""
    facts = read_facts(state.engine, storage)
    contents, envelope = SUMMARIES.get(state.engine, state.out_dir, storage, facts.succeeded)
    return storage_document(facts, contents, envelope, admin)


# --- Posting a storage ---------------------------------------------------------------------------------------


class StorageIn(BaseModel):
    """The body of ``POST /storages``, as the PCRS site sends it."""

    model_config = ConfigDict(extra="ignore")

    type: str
    params: dict[str, Any] | None = None


async def read_json(request: Request, max_bytes: int, max_depth: int = 64) -> Any:
    """The request's JSON body, read within `max_bytes` and `max_depth` (`ConfigError` otherwise)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ConfigError(f"the body is larger than {max_bytes} bytes")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > max_bytes:
            raise ConfigError(f"the body is larger than {max_bytes} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("the body is not UTF-8") from None
    if json_depth(text) > max_depth:
        raise ConfigError(f"the body nests arrays and objects more than {max_depth} levels deep")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"the body is not JSON: {exc.msg} at line {exc.lineno}") from None


async def storage_body(request: Request) -> Any:
    """The body of ``POST /storages``, bounded."""
    return await read_json(request, MAX_STORAGE_BODY, 16)


async def projet_body(request: Request) -> Any:
    """The body of ``POST /projets``, bounded as a projet document is."""
    settings = get_state(request).settings
    return await read_json(request, settings.max_document_bytes, settings.max_document_depth)


def posted_source(body: Any) -> str:
    """The source URL of a posted ``{type, params}``; `ConfigError` (400) with the reason otherwise."""
    if not isinstance(body, dict):
        raise ConfigError("the body must be a JSON object {type, params}")
    kind = body.get("type")
    if kind not in TYPES:
        raise ConfigError(f"type must be one of {', '.join(TYPES)}")
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise ConfigError("params must be an object")
    params = params or {}
    if params.get("url_externe") and not any(params.get(k) for k in ("url", "host", "bucket")):
        raise ConfigError("storage: external (url_externe only): it cannot be scanned")
    source = stockage_source(kind, params, "storage")
    scheme = urlsplit(source).scheme.lower()
    if scheme not in SCHEMES[kind]:
        raise ConfigError(f"storage: a {kind} storage is reached by {' or '.join(s + '://' for s in SCHEMES[kind])}, "
                          f"not {scheme + '://' if scheme else 'a local path'}")
    return source


def network_source(source: str) -> str:
    """`source`, when it is reached over the network (`ConfigError` for a local folder of the server)."""
    scheme = urlsplit(source).scheme.lower()
    if not any(scheme in schemes for schemes in SCHEMES.values()):
        raise ConfigError("only http(s), ftp(s), sftp and s3 storages can be published over the API, "
                          f"not {scheme + '://' if scheme else 'a local path'}")
    return source


_RESOLVER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="resolve")


def check_address(source: str, policy: AddressPolicy) -> None:
    """Refuse (`ForbiddenAddress`) a storage whose host is, or resolves to, an address the policy refuses.

    A host that does not resolve within `RESOLVE_S` is let through: its scan will say why it fails.
    """
    parts = urlsplit(source)
    host = parts.hostname
    if storage_type(source) == "s3":
        endpoint = parse_qs(parts.query).get("endpoint_url", [None])[0]
        host = urlsplit(endpoint).hostname if endpoint else None
    if not host:
        return
    future = _RESOLVER.submit(policy.resolve, host, parts.port or 443)
    try:
        future.result(timeout=RESOLVE_S)
    except ForbiddenAddress:
        raise
    except (OSError, FutureTimeout):
        return


def _storage_identity(state: ApiState, source: str) -> str:
    with open_storage(source, AccessOptions.from_settings(state.settings)) as storage:
        return storage.url


def attach_storage(state: ApiState, body: Any) -> tuple[int, bool]:
    """Record a posted storage (the same one posted twice is one) and queue a scan unless one is queued or
    running; returns (id, created)."""
    source = posted_source(body)
    check_address(source, AddressPolicy.of(state.settings.allowed_networks))
    try:
        url = _storage_identity(state, source)
    except ValueError as exc:
        raise ConfigError(f"storage: its URL is not valid ({exc})") from None
    secret = mask_url(source) != source
    box = state.settings.secret_box()
    if secret and not box.ready:
        raise Unavailable("a storage with credentials needs PCRS_INDEXER_SECRET_KEY to keep them encrypted")
    storage, created = catalog.register_storage(state.engine, url, None if secret else source,
                                                box.seal(source) if secret else None)
    scan = scans.claim_scan(state.engine, storage, Trigger.PUBLISH, False, state.settings.scan_lease_s)
    if scan is not None:
        dispatch(state.engine, state.runner, [scan])
    return storage, created


# --- The routes -----------------------------------------------------------------------------------------------

Admin = Depends(require_admin)
State = Annotated[ApiState, Depends(get_state)]

_STORAGE_SCHEMA = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": StorageIn.model_json_schema()}}}}


@router.post("/storages", dependencies=[Admin], openapi_extra=_STORAGE_SCHEMA, status_code=201,
             summary="Attach a storage {type, params}; queue its scan", responses=errors(400, 401))
def post_storage(state: State, body: Annotated[Any, Depends(storage_body)]) -> JSONResponse:
    """Record a storage and queue its scan: 201 with its document, 200 when it was known (no second scan)."""
    storage, created = attach_storage(state, body)
    return JSONResponse(document_of(state, storage, admin=True), 201 if created else 200)


@router.get("/storages", dependencies=[Admin], summary="Every storage, as `pcrs-indexer storages --json`",
            responses=errors(401))
def list_storages(state: State) -> list[dict[str, Any]]:
    """The storages of the store: id, URL without credentials, status, last success, counts, last error."""
    return [{**row.as_json(), "_id": str(row.id)} for row in queries.storage_rows(state.engine)]


@router.get("/storages/{storage_id}", summary="A storage's document: scan state and last result",
            responses=errors(404))
def get_storage(state: State, storage_id: str, admin: Annotated[bool, Depends(admin_header)]) -> dict[str, Any]:
    """The storage document, as pcrs-scanner's; ``params`` for the admin only, the password masked."""
    return document_of(state, parse_id(storage_id), admin)


@router.post("/storages/{storage_id}/scan", dependencies=[Admin], summary="Queue a scan of a storage",
             responses=errors(401, 404, 409))
def post_scan(state: State, storage_id: str) -> dict[str, Any]:
    """Queue a scan: the storage document, 409 when one is already pending or processing."""
    storage = parse_id(storage_id)
    read_facts(state.engine, storage)
    scan = queueing.queue_scan(state.engine, storage, Trigger.REQUEUE, False, state.settings.scan_lease_s)
    dispatch(state.engine, state.runner, [scan])
    return document_of(state, storage, admin=True)


@router.post("/storages/{storage_id}/generate-download-token", dependencies=[Admin],
             summary="A token opening this storage's files for 24 to 72 hours", responses=errors(401, 404))
def post_download_token(state: State, storage_id: str) -> dict[str, str]:
    """``{"token"}``, scoped to this storage, valid ``PCRS_INDEXER_DOWNLOAD_TOKEN_TTL_S``."""
    storage = parse_id(storage_id)
    read_facts(state.engine, storage)
    secret = download_secret(state)
    return {"token": issue_download_token(storage, secret, time.time(), state.settings.download_token_ttl_s)}


@router.post("/projets", dependencies=[Admin], summary="Publish a projet document: queue its livrables' scans",
             responses=errors(400, 401),
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": {"type": "object", "description": "the projet document, as the PCRS API serves it"}}}}})
def post_projet(state: State, body: Annotated[Any, Depends(projet_body)]) -> dict[str, Any]:
    """As ``pcrs-indexer publish``: the storages and scans queued, the livrables refused or skipped."""
    if not isinstance(body, dict):
        raise ConfigError("the projet document must be a JSON object")
    settings = state.settings
    queued = queueing.publish(state.engine, Projet.from_document(body), None,
                              lambda source: _storage_identity(state, network_source(source)), False,
                              settings.secret_box(),
                              lease_s=settings.scan_lease_s)
    dispatch(state.engine, state.runner, [q.scan for q in queued if q.scan is not None])
    summary = queueing.publish_summary(queued)
    summary["queued"] = [{**q, "storage": str(q["storage"])} for q in summary["queued"]]
    summary["storages"] = [q["storage"] for q in summary["queued"]]
    return summary
