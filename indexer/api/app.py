"""The application: `create_app` includes each module's router, installs the error table, CORS, ``/healthz``, ``/docs``.

Every error answers JSON ``{"code": <status>, "message": <one line>}`` (the PCRS site reads
``body.message``): the classes raised on purpose by their status in `STATUS_CODES`, a request that
does not validate 400 as pcrs-scanner answers it, anything else 500 without detail. No answer
carries a traceback or a credential (messages are scrubbed; tracebacks go to the server's log).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexer import __version__
from indexer.api import data, docs, files, items, page, quality, scanner
from indexer.api.auth import TokenRefused, Unauthorized, Unavailable
from indexer.api.deps import ApiState, get_state
from indexer.api.runner import Runner
from indexer.errors import (
    BrokerUnreachable,
    ConfigError,
    ForbiddenAddress,
    InvalidSource,
    LivrableNotFound,
    MapAssetsMissing,
    ScanRunning,
    StorageNotFound,
)
from indexer.settings import ApiSettings, get_api_settings
from indexer.storages.access import scrub
from indexer.store.engine import create_store

log = logging.getLogger(__name__)

STATUS_CODES: dict[type[Exception], int] = {
    ConfigError: 400,
    InvalidSource: 400,
    ForbiddenAddress: 400,
    Unauthorized: 401,
    TokenRefused: 403,
    StorageNotFound: 404,
    LivrableNotFound: 404,
    ScanRunning: 409,
    Unavailable: 503,
    BrokerUnreachable: 503,
    MapAssetsMissing: 503,
    SQLAlchemyError: 503,
}
"""The status of each error class raised on purpose (the nearest class in its hierarchy)."""

UNEXPECTED = "An unexpected error has occurred"

BROKER_PING_S = 3.0
"""Deadline of the broker check of ``/healthz``."""


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON answer of an error: ``{"code", "message"}``, the message scrubbed of every credential."""
    return JSONResponse({"code": status, "message": scrub(" ".join(message.split()))}, status, headers=headers)


def _status(exc: BaseException) -> int | None:
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return None


async def _known(request: Request, exc: Exception) -> JSONResponse:
    status = _status(exc) or 500
    if isinstance(exc, SQLAlchemyError):
        log.warning("state store unreachable", extra={"path": request.url.path, "error": str(exc).split("\n")[0]})
        return error(status, "state store unreachable")
    headers = {"WWW-Authenticate": "Token"} if isinstance(exc, Unauthorized) else None
    return error(status, str(exc), headers)


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    first: dict[str, Any] = next(iter(exc.errors()), {})
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return error(400, f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid"))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error", exc_info=exc, extra={"path": request.url.path})
    return error(500, UNEXPECTED)


health = APIRouter(tags=["health"])


def _check_store(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return scrub(str(getattr(exc, "orig", None) or exc).split("\n")[0])
    return None


def _check_broker(url: str) -> str | None:
    import redis  # the broker is Redis; only broker mode asks for it
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(url, socket_timeout=BROKER_PING_S, socket_connect_timeout=BROKER_PING_S,
                                  retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return scrub(str(exc))
    finally:
        client.close()
    return None


@health.get("/healthz", summary="Whether the store (and the broker) answer, and which mode the server is in",
            responses={503: {"description": "The store or the broker does not answer: the same document"}})
def healthz(state: Annotated[ApiState, Depends(get_state)]) -> JSONResponse:
    """200 when the store (and in broker mode the broker) answers, else 503; says the mode."""
    store = _check_store(state.engine)
    broker = _check_broker(state.settings.broker_url) if state.settings.broker_mode() else None
    ok = store is None and broker is None
    body = {"status": "ok" if ok else "unavailable", "mode": state.mode, "version": __version__,
            "store": store or "ok", "broker": (broker or "ok") if state.settings.broker_mode() else None}
    return JSONResponse(body, 200 if ok else 503)


def create_app(settings: ApiSettings | None = None, engine: Engine | None = None) -> FastAPI:
    """The API over the store of `settings` (default: the environment's), its routers included.

    Without a broker configured, the application runs the scans it queues itself, in threads
    started with it and stopped with it (`indexer.api.runner`).
    """
    settings = settings or get_api_settings()
    engine = engine or create_store(settings.database_url())
    out_dir = settings.outputs_dir()
    runner = None if settings.broker_mode() else Runner(engine, settings, out_dir)
    state = ApiState(settings, engine, out_dir, runner)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runner is not None:
            runner.start()
        log.info("serving", extra={"mode": state.mode, "store": engine.url.render_as_string(hide_password=True)})
        try:
            yield
        finally:
            if runner is not None:
                runner.stop()
            engine.dispose()

    app = FastAPI(title="pcrs-indexer", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="The PCRS data API, and the storage routes of the PCRS site's scanner.",
                  responses=docs.errors(500, 503))
    app.openapi = lambda: docs.openapi_of(app)  # type: ignore[method-assign]
    app.state.api = state
    for cls in STATUS_CODES:
        app.add_exception_handler(cls, _known)
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "HEAD"], allow_headers=["*"],
                       expose_headers=["Content-Length", "Content-Range", "ETag", "Content-Disposition"])
    app.include_router(health)
    app.include_router(scanner.router)
    app.include_router(items.router)
    app.include_router(files.router)
    app.include_router(page.router)
    app.include_router(data.router)
    app.include_router(quality.router)
    app.include_router(docs.router)
    return app
