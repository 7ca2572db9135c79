"""The storage routes of the PCRS site's scanner (pcrs-scanner's contract), over the store."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["storages"])
