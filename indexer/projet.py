"""The projet document the PCRS API serves, and the livrable a scan indexes.

Parsed with pydantic because it crosses a boundary: it comes from another service or a file.
Unknown fields are kept out; missing ones are None.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
from fsspec.implementations.http import HTTPFileSystem
from pydantic import BaseModel, ConfigDict, ValidationError

from indexer.errors import ConfigError, LivrableNotFound
from indexer.storages.access import mask_url


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


class Livrable(_Doc):
    """A deliverable of the projet and where it is stored."""

    nom: str
    nature: str | None = None
    licence: str | None = None
    diffusion: str | None = None
    diffusion_url: str | None = None
    diffusion_layer: str | None = None
    recouvr_lat: float | None = None
    recouvr_lon: float | None = None
    focale: float | None = None
    stockage: str | None = None
    stockage_params: dict[str, Any] | None = None
    stockage_public: bool | None = None


class Projet(_Doc):
    """A PCRS projet as the API serves it."""

    id: str | None = None
    nom: str | None = None
    etapes: list[Etape] = []
    acteurs: list[Acteur] = []
    subventions: list[Subvention] = []
    livrables: list[Livrable] = []

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

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


def load_projet(location: str, timeout_s: float = 30.0) -> Projet:
    """Read a projet document from a file path or an http(s) URL."""
    scheme = urlsplit(location).scheme.lower()
    try:
        if scheme in ("http", "https"):
            fs = HTTPFileSystem(client_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout_s)},
                                skip_instance_cache=True)
            text = fs.cat_file(location).decode("utf-8")
        else:
            text = Path(location).read_text(encoding="utf-8")
        doc = json.loads(text)
    except (OSError, aiohttp.ClientError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read projet {mask_url(location)}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"projet {mask_url(location)} is not JSON: {exc.msg} at line {exc.lineno}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"projet {mask_url(location)} is not a JSON object")
    return Projet.from_document(doc)


STOCKAGES = ("http", "ftp", "sftp", "s3")
"""The kinds of storage a projet document's livrable may name."""


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes", "oui")


def livrable_source(livrable: Livrable) -> str:
    """The SOURCE URL of a livrable's storage, built from its ``stockage`` and ``stockage_params``.

    ``url`` when the params give one; else ``host``, ``port``, ``startPath``, ``username``,
    ``password`` and ``secure`` (FTPS, or HTTPS) for http, ftp and sftp; ``bucket``, ``prefix``,
    ``endpoint_url`` and ``region`` for s3. The URL carries the password: mask it before showing it.
    """
    kind = (livrable.stockage or "").strip().lower()
    params = livrable.stockage_params or {}
    if kind not in STOCKAGES:
        raise ConfigError(f"livrable {livrable.nom!r}: stockage {livrable.stockage!r} is not supported "
                          f"({', '.join(STOCKAGES)})")
    if params.get("url"):
        return str(params["url"]).strip()
    if kind == "s3":
        bucket = str(params.get("bucket") or "").strip()
        if not bucket:
            raise ConfigError(f"livrable {livrable.nom!r}: stockage s3 without bucket")
        prefix = quote(str(params.get("prefix") or "").strip("/"), safe="/")
        endpoint = params.get("endpoint_url") or params.get("endpoint")
        query = urlencode({k: v for k, v in (("endpoint_url", endpoint), ("region", params.get("region"))) if v},
                          safe=":/")
        return f"s3://{bucket}/{prefix}" + (f"?{query}" if query else "")
    host = str(params.get("host") or "").strip()
    if not host:
        raise ConfigError(f"livrable {livrable.nom!r}: stockage {kind} without host")
    scheme = {"http": "https", "ftp": "ftps"}.get(kind, kind) if _truthy(params.get("secure")) else kind
    userinfo = ""
    if params.get("username"):
        userinfo = quote(str(params["username"]), safe="")
        if params.get("password"):
            userinfo += ":" + quote(str(params["password"]), safe="")
        userinfo += "@"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = f":{int(params['port'])}" if params.get("port") else ""
    path = quote(str(params.get("startPath") or "").strip("/"), safe="/")
    return f"{scheme}://{userinfo}{host}{port}/{path}"


def _source_or_empty(livrable: Livrable) -> str:
    try:
        return livrable_source(livrable)
    except ConfigError:
        return ""


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def select_livrable(projet: Projet, name: str | None, source: str | None) -> Livrable:
    """The livrable named `name`; else the only one; else the one stored at `source`."""
    if name is not None:
        for livrable in projet.livrables:
            if livrable.nom == name:
                return livrable
        raise LivrableNotFound(f"livrable {name!r} not found in projet {projet.nom or projet.id!r}")
    if len(projet.livrables) == 1:
        return projet.livrables[0]
    if source is not None:
        matches = [liv for liv in projet.livrables if _same_url(_source_or_empty(liv), source)]
        if len(matches) == 1:
            return matches[0]
    names = ", ".join(repr(liv.nom) for liv in projet.livrables) or "none"
    raise LivrableNotFound(
        f"projet {projet.nom or projet.id!r} has several livrables ({names}): choose one with --livrable"
        if projet.livrables else f"projet {projet.nom or projet.id!r} has no livrable"
    )


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
