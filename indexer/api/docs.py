"""The API's documentation: ``/docs`` (Swagger UI, served from ``/static/`` like Leaflet: nothing comes
from another site) and the OpenAPI document ``/openapi.json``, whose error answers are the
application's ``{"code", "message"}``.

Swagger UI is npm's ``swagger-ui-dist``, pinned by the lock file of ``static/`` and installed by
``npm ci`` beside Leaflet. Every operation documents its errors with `errors`; a request that does
not validate is answered 400 (not FastAPI's 422), which `openapi_of` writes in the document.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from indexer.errors import MapAssetsMissing
from indexer.preview import STATIC

SWAGGER_UI = STATIC / "node_modules" / "swagger-ui-dist"
"""Swagger UI's files, once ``npm ci`` installed them."""

ERRORS: dict[int, str] = {
    400: "The request is not valid (the message says which part)",
    401: "No admin token, or a wrong one: send `Authorization: Token <admin token>`",
    403: "No valid download token of this storage (`?token=`)",
    404: "Unknown storage (or file), or one never scanned successfully",
    409: "A scan of the storage is already pending or running",
    416: "The Range asked for is not valid or not satisfiable",
    500: "Unexpected error (no detail; the server's log has it)",
    502: "The storage did not give the file",
    503: "The state store, the broker, a needed secret or the page's files are unavailable",
}
"""What each error status means, as the operations document it."""

router = APIRouter()


class Error(BaseModel):
    """Every error's answer."""

    code: int = Field(description="The HTTP status")
    message: str = Field(description="One line, without credential")


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of an operation answering these error statuses, each with the `Error` body."""
    return {status: {"model": Error, "description": ERRORS[status]} for status in statuses}


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI over ``/openapi.json``, its script, style and icon from ``/static/swagger-ui/``."""
    if not (SWAGGER_UI / "swagger-ui-bundle.js").is_file():
        raise MapAssetsMissing(f"Swagger UI is missing ({SWAGGER_UI}): install it with "
                               f"`npm ci --prefix {STATIC}` (`make venv` does)")
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}", title=f"{request.app.title} - API",
        swagger_js_url=f"{root}/static/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/static/swagger-ui/swagger-ui.css",
        swagger_favicon_url=f"{root}/static/swagger-ui/favicon-32x32.png",
        oauth2_redirect_url=None,  # no OAuth2 here: admin and download tokens
        swagger_ui_parameters={"validatorUrl": None})  # no badge fetched from validator.swagger.io


def openapi_of(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document of `app`, its 422 answers written as what the application answers: 400 `Error`."""
    schema = FastAPI.openapi(app)  # built once, then cached by FastAPI: the changes below are kept
    body = {"schema": {"$ref": "#/components/schemas/Error"}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation["responses"]
            if responses.pop("422", None) is not None:
                responses.setdefault("400", {"description": ERRORS[400], "content": {"application/json": body}})
            for response in responses.values():  # an error is JSON, also from a route answering HTML
                if body in response.get("content", {}).values():
                    response["content"] = {"application/json": body}
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
    return schema
