"""The projet document the PCRS API serves, and the livrable a scan indexes.

Parsed with pydantic because it crosses a boundary: it comes from another service or a file.
Unknown fields are kept out; missing ones are None.
"""

from __future__ import annotations

import ipaddress
import json
import re
from datetime import date
from itertools import accumulate
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from indexer.errors import ConfigError, ForbiddenAddress, LivrableNotFound, ReadError
from indexer.storages.access import AccessOptions, mask_url


class _Doc(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Etape(_Doc):
    """A step of the projet's calendar."""

    statut: str
    date_debut: date | None = None


class Acteur(_Doc):
    """A participant of the projet."""

    nom: str | None = None
    siren: str | int | None = None
    role: str | None = None


class Subvention(_Doc):
    """A grant that funded the projet."""

    nom: str | None = None
    nature: str | None = None
    montant: float | None = None
    echeance: str | None = None


RASTER_NATURES = frozenset({"geotiff", "jpeg2000"})
"""The natures of a livrable made of dalles, as the PCRS site names them."""
VECTOR_NATURES = frozenset({"gml", "gpkg", "shp", "dxf", "dwg"})
"""The natures of a livrable of vector data: nothing to index."""


class Livrable(_Doc):
    """A deliverable of the projet and where it is stored."""

    nom: str
    nature: str | None = None
    licence: str | None = None
    diffusion: str | None = None
    diffusion_url: str | None = None
    diffusion_layer: str | None = None
    recouvr_lat: int | float | None = None
    """As the document wrote it: 60 stays 60, 60.5 stays 60.5."""
    recouvr_lon: int | float | None = None
    focale: float | None = None
    stockage: str | None = None
    stockage_params: dict[str, Any] | None = None
    stockage_public: bool | None = None

    @property
    def vector(self) -> bool:
        """Whether its nature says it holds vector data (gml, gpkg, shp, dxf, dwg), not dalles."""
        return (self.nature or "").strip().lower() in VECTOR_NATURES

    @property
    def raster(self) -> bool:
        """Whether its nature says it holds dalles (geotiff, jpeg2000)."""
        return (self.nature or "").strip().lower() in RASTER_NATURES

    def unscannable(self) -> str | None:
        """Why the livrable has no dalles to scan (no stockage, vector data, an external URL); None if it has."""
        params = self.stockage_params or {}
        if not self.stockage:
            return "no stockage"
        if self.vector:
            return f"nature {self.nature!r} is vector data, not dalles"
        if params.get("url_externe") and not any(params.get(k) for k in ("url", "host", "bucket")):
            return "its stockage is external (url_externe only): it cannot be scanned"
        return None


class Projet(_Doc):
    """A PCRS projet as the API serves it."""

    id: str | None = None
    nom: str | None = None
    etapes: list[Etape] = []
    acteurs: list[Acteur] = []
    subventions: list[Subvention] = []
    livrables: list[Livrable] = []

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    @field_validator("etapes", "acteurs", "subventions", "livrables", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        """The site allows ``null`` for a list it has nothing in (``subventions: null``)."""
        return [] if value is None else value

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Projet:
        """Parse a projet document; its ``_id`` becomes `id`."""
        doc = dict(doc)
        if "_id" in doc:
            doc["id"] = str(doc.pop("_id"))
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"invalid projet document: {where}: {first['msg']}") from exc


def published_document(projet: Projet, livrable: Livrable | None) -> dict[str, Any]:
    """What the store keeps of a projet for one livrable's outputs: the projet with that livrable
    only, without its ``stockage_params`` (credentials live apart, encrypted)."""
    document = projet.model_dump(mode="json", exclude={"livrables"})
    document["livrables"] = [livrable.model_dump(mode="json", exclude={"stockage_params"})] if livrable else []
    return document


def projet_key(projet: Projet) -> str:
    """What identifies a projet in the store: its ``_id``, else its ``nom``; `ConfigError` without either."""
    key = projet.id or projet.nom
    if not key:
        raise ConfigError("projet without _id nor nom: its livrables cannot be told from another projet's")
    return key


def load_projet(location: str, access: AccessOptions | None = None, token: str | None = None) -> Projet:
    """Read a projet document from a file path or an http(s) URL.

    A URL is fetched as a storage is reached (`indexer.storages.http.fetch_document`: the address
    policy, retries within the deadline, the user agent). Bounds: at most
    ``access.max_document_bytes`` read (decoded), nesting at most ``access.max_document_depth``.
    `token` is sent as the PCRS site expects it (``Authorization: Token …``): with it, the site
    includes the ``stockage_params`` of private stockages (``stockage_public: false``).
    """
    access = access or AccessOptions()
    shown = mask_url(location)
    scheme = urlsplit(location).scheme.lower()
    try:
        if scheme in ("http", "https"):
            headers = {"Authorization": f"Token {token}"} if token else {}
            from indexer.storages.http import fetch_document  # aiohttp and GDAL: only to fetch one

            data = fetch_document(location, access, headers)
        else:
            with open(location, "rb") as file:
                data = file.read(access.max_document_bytes + 1)
            if len(data) > access.max_document_bytes:
                raise ConfigError(f"projet {shown} is larger than {access.max_document_bytes} bytes "
                                  "(the max_document_bytes setting)")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read projet {shown}: {exc}") from exc
    except (ReadError, ForbiddenAddress) as exc:
        raise ConfigError(f"cannot read projet {shown}: {getattr(exc, 'detail', exc)}") from exc
    depth = json_depth(text)
    if depth > access.max_document_depth:
        raise ConfigError(f"projet {shown} nests arrays and objects {depth} levels deep, more than "
                          f"{access.max_document_depth} (the max_document_depth setting)")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"projet {shown} is not JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"projet {shown} is not a JSON object")
    return Projet.from_document(doc)


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(text: str) -> int:
    """How deep arrays and objects nest in a JSON text (brackets inside strings not counted).

    Linear in the text's length, without parsing it: a bound checked before `json.loads` recurses.
    """
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(1 if c in "[{" else -1 for c in brackets), default=0)


STOCKAGES = ("http", "ftp", "sftp", "s3")
"""The kinds of storage a projet document's livrable may name."""

HOST_SCHEMES: dict[str, dict[str, bool]] = {"http": {"http": False, "https": True},
                                            "ftp": {"ftp": False, "ftps": True}, "sftp": {"sftp": False}}
"""The schemes a ``host`` may be written with, by kind of stockage, and whether each means ``secure``."""

_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?")


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes", "oui")


def _port(where: str, value: Any) -> int | None:
    """A port from a document: a number or its digits, 1 to 65535; None when absent."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"{where}: port {value!r} is not a port number (1 to 65535)")
    return int(text)


def _shown(text: str) -> str:
    """A URL or host as a message may show it: its password masked, or all before ``@`` if it does not parse."""
    try:
        return mask_url(text)
    except ValueError:
        return "***@" + text.rsplit("@", 1)[-1] if "@" in text else text


def _server(where: str, kind: str, params: dict[str, Any]) -> tuple[str, int | None, bool]:
    """(host, port, secure) of a stockage's ``host``, ``port`` and ``secure``.

    A host written as a URL of the stockage's own kind (``ftp://ftp.example.fr:2121``, ``ftps://``
    meaning secure) is taken for its host and port; any other scheme, a user, a path or a query
    in it is refused.
    """
    host = str(params.get("host") or "").strip()
    port = _port(where, params.get("port"))
    secure = _truthy(params.get("secure"))
    if not host:
        raise ConfigError(f"{where}: stockage {kind} without host")
    if "://" in host:
        shown = _shown(host)
        try:
            parts = urlsplit(host)
            url_port = parts.port
        except ValueError as exc:
            raise ConfigError(f"{where}: host {shown!r} is not a valid URL ({exc})") from None
        schemes = HOST_SCHEMES[kind]
        if parts.scheme.lower() not in schemes:
            raise ConfigError(f"{where}: host {shown!r} is a {parts.scheme or '?'}:// URL, not a stockage {kind} "
                              f"host ({', '.join(s + '://' for s in schemes)} or a bare host name)")
        if parts.username or parts.password or parts.path.strip("/") or parts.query or parts.fragment:
            raise ConfigError(f"{where}: host {shown!r} must name only a server (user, password and folder "
                              "go in username, password and startPath)")
        if port is not None and url_port is not None and port != url_port:
            raise ConfigError(f"{where}: host {shown!r} and port {port} disagree")
        host, port, secure = parts.hostname or "", port or url_port, secure or schemes[parts.scheme.lower()]
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST_NAME.fullmatch(host):
            raise ConfigError(f"{where}: host {_shown(host)!r} is not a host name or an IP address") from None
    return host, port, secure


def livrable_source(livrable: Livrable) -> str:
    """The SOURCE URL of a livrable's storage, built from its ``stockage`` and ``stockage_params``.

    ``url`` when the params give one; else ``host`` (a name, an address, or a URL of the
    stockage's own scheme), ``port``, ``startPath``, ``username``, ``password`` and ``secure``
    (FTPS, or HTTPS) for http, ftp and sftp; ``bucket``, ``prefix``, ``endpoint_url`` and
    ``region`` for s3. Raises `ConfigError`, one line naming the livrable, for parameters that
    make no storage URL. The URL carries the password: mask it before showing it.
    """
    where = f"livrable {livrable.nom!r}"
    params = livrable.stockage_params or {}
    if not params and livrable.stockage_public is False and (livrable.stockage or "").strip().lower() in STOCKAGES:
        raise ConfigError(f"{where}: no stockage_params: the site leaves them out of a private stockage "
                          "(stockage_public false) unless asked with a token (PCRS_INDEXER_PROJET_API_TOKEN)")
    return stockage_source(livrable.stockage, params, where)


def stockage_source(stockage: str | None, params: dict[str, Any], where: str) -> str:
    """The SOURCE URL of a stockage (its kind and parameters, as `livrable_source` reads them).

    Raises `ConfigError`, one line starting with `where`, for parameters that make no storage URL.
    """
    kind = (stockage or "").strip().lower()
    if kind not in STOCKAGES:
        raise ConfigError(f"{where}: stockage {stockage!r} is not supported ({', '.join(STOCKAGES)})")
    if params.get("url"):
        return _checked(where, str(params["url"]).strip())
    if kind == "s3":
        bucket = str(params.get("bucket") or "").strip()
        if not bucket:
            raise ConfigError(f"{where}: stockage s3 without bucket")
        prefix = quote(str(params.get("prefix") or "").strip("/"), safe="/")
        endpoint = params.get("endpoint_url") or params.get("endpoint")
        query = urlencode({k: v for k, v in (("endpoint_url", endpoint), ("region", params.get("region"))) if v},
                          safe=":/")
        return _checked(where, f"s3://{bucket}/{prefix}" + (f"?{query}" if query else ""))
    host, port, secure = _server(where, kind, params)
    scheme = {"http": "https", "ftp": "ftps"}.get(kind, kind) if secure else kind
    userinfo = ""
    if params.get("username"):
        userinfo = quote(str(params["username"]), safe="")
        if params.get("password"):
            userinfo += ":" + quote(str(params["password"]), safe="")
        userinfo += "@"
    if ":" in host:
        host = f"[{host}]"
    path = quote(str(params.get("startPath") or "").strip("/"), safe="/")
    return _checked(where, f"{scheme}://{userinfo}{host}{f':{port}' if port else ''}/{path}")


def _checked(where: str, url: str) -> str:
    """The URL, once it parses (host and port included); else a `ConfigError` naming the livrable."""
    try:
        parts = urlsplit(url)
        _ = parts.hostname, parts.port
    except ValueError as exc:
        raise ConfigError(f"{where}: {_shown(url)!r} is not a valid URL ({exc})") from None
    return url


def _source_or_empty(livrable: Livrable) -> str:
    try:
        return livrable_source(livrable)
    except ConfigError:
        return ""


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def choose_livrable(projet: Projet, name: str | None, source: str | None) -> tuple[Livrable, str]:
    """The livrable to index and why it was chosen.

    The one named `name`; else the only one; else the one stored at `source`; else the only one
    whose nature is raster (geotiff, jpeg2000); else the only one not of vector data.
    """
    if name is not None:
        for livrable in projet.livrables:
            if livrable.nom == name:
                return livrable, "named by --livrable"
        raise LivrableNotFound(f"livrable {name!r} not found in projet {projet.nom or projet.id!r}")
    if len(projet.livrables) == 1:
        return projet.livrables[0], "the projet's only livrable"
    if source is not None:
        matches = [liv for liv in projet.livrables if _same_url(_source_or_empty(liv), source)]
        if len(matches) == 1:
            return matches[0], "stored at SOURCE"
    for rule, why in ((lambda liv: liv.raster, "the projet's only raster livrable"),
                      (lambda liv: not liv.vector, "the projet's only livrable not of vector data")):
        found = [liv for liv in projet.livrables if rule(liv)]
        if len(found) == 1:
            return found[0], why
    names = ", ".join(repr(liv.nom) for liv in projet.livrables) or "none"
    raise LivrableNotFound(
        f"projet {projet.nom or projet.id!r} has several livrables ({names}): choose one with --livrable"
        if projet.livrables else f"projet {projet.nom or projet.id!r} has no livrable"
    )


def select_livrable(projet: Projet, name: str | None, source: str | None) -> Livrable:
    """The livrable `choose_livrable` chooses."""
    return choose_livrable(projet, name, source)[0]


CALENDRIER = {
    "investigation": "03", "convention_signee": "03", "marche_public_en_cours": "03",
    "prod_en_cours": "02", "controle_en_cours": "02",
    "realise": "01", "disponible": "01", "obsolete": "01",
}


def current_etape(etapes: list[Etape], today: date) -> Etape | None:
    """The latest etape begun by `today`; the last one if none is dated; the first if all are ahead."""
    if not etapes:
        return None
    dated = [e for e in etapes if e.date_debut is not None]
    if not dated:
        return etapes[-1]
    begun = [e for e in dated if e.date_debut is not None and e.date_debut <= today]
    if not begun:
        return etapes[0]
    # The latest start wins; of two etapes begun the same day, the later in the list.
    return max(enumerate(begun), key=lambda pair: (pair[1].date_debut or date.min, pair[0]))[1]
