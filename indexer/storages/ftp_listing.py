"""The listings of FTP servers: LIST lines (Unix ``ls -l`` and DOS/IIS styles) and MLSD facts.

Pure functions: a line or a fact set in, a `Child` (or None: no entry) out, dates in ISO 8601.
Never raising, in time linear in the line's length (ftplib caps a line at 8 KiB).
"""

from __future__ import annotations

import re
from contextlib import suppress
from datetime import UTC, datetime, timedelta

from indexer.storages.crawl import Child

_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                                        "nov", "dec"), start=1)}
# Possessive runs of spaces (\s++): a line of thousands of spaces is not tried every way it splits.
_UNIX_LINE = re.compile(
    r"^(?P<kind>[-dlbcps])\S{9}\S?\s++.*?\s(?P<size>[0-9]{1,20})\s++(?P<month>[A-Za-z]{3})\s++(?P<day>\d{1,2})\s++"
    r"(?P<when>\d{1,2}:\d{2}|\d{4})\s(?P<name>.+)$")
_DOS_LINE = re.compile(
    r"^(?P<date>\d{1,2}-\d{1,2}-\d{2,4})\s++(?P<time>\d{1,2}:\d{2}\s*+[AaPp][Mm])\s++(?P<size><DIR>|[0-9]{1,20})"
    r"\s++(?P<name>.+)$")

_SIZE_FACT = re.compile(r"[0-9]{1,20}")
"""A size as a listing may give it: ASCII digits, fewer than a number too long to convert."""


def parse_list_line(line: str, now: datetime) -> Child | None:
    """One line of a LIST answer (Unix ``ls -l`` or DOS/IIS style), None when it is no entry.

    A date without a year is in the twelve months before `now`. Symbolic links are files whose
    size is unknown (the listing shows the link's own). Dates are the server's local time.
    """
    line = line.rstrip("\r\n")
    unix = _UNIX_LINE.match(line)
    if unix:
        name = unix["name"]
        kind = unix["kind"]
        if kind == "l":
            name = name.split(" -> ", 1)[0]
        if kind not in "-dl" or not _usable(name):
            return None
        month = _MONTHS.get(unix["month"].lower())
        if month is None:
            return None
        mtime = _unix_date(month, int(unix["day"]), unix["when"], now)
        size = int(unix["size"]) if kind == "-" else None
        return Child(name, kind == "d", size, mtime)
    dos = _DOS_LINE.match(line)
    if dos:
        stamp = f"{dos['date']} {dos['time'].replace(' ', '').upper()}"
        mtime = None
        for fmt in ("%m-%d-%y %I:%M%p", "%m-%d-%Y %I:%M%p"):
            with suppress(ValueError):
                mtime = datetime.strptime(stamp, fmt).isoformat()
                break
        is_dir = dos["size"].upper() == "<DIR>"
        return Child(dos["name"], is_dir, None if is_dir else int(dos["size"]), mtime) if _usable(dos["name"]) else None
    return None


def _usable(name: str) -> bool:
    """Whether a listed name can be a child of its folder: not empty, ``.`` or ``..``, no ``/`` nor NUL."""
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name


def _unix_date(month: int, day: int, when: str, now: datetime) -> str | None:
    try:
        if ":" in when:
            hour, minute = (int(x) for x in when.split(":"))
            stamp = datetime(now.year, month, day, hour, minute)
            if stamp > now.replace(tzinfo=None) + timedelta(days=1):
                stamp = stamp.replace(year=now.year - 1)
        else:
            stamp = datetime(int(when), month, day)
    except ValueError:
        return None
    return stamp.isoformat()


def mlsd_time(value: str | None) -> str | None:
    """An MLSD ``modify`` fact (``YYYYMMDDHHMMSS``, UTC) in ISO 8601; None when absent or invalid."""
    if not value:
        return None
    try:
        return datetime.strptime(value[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC).isoformat()
    except ValueError:
        return None


def mlsd_child(name: str, facts: dict[str, str]) -> Child | None:
    """The entry of one MLSD line, None for what is neither a file nor a folder (``.``, links…)."""
    kind = facts.get("type", "").lower()
    if kind not in ("file", "dir") or not _usable(name):
        return None
    size = int(facts["size"]) if kind == "file" and _SIZE_FACT.fullmatch(facts.get("size", "")) else None
    return Child(name, kind == "dir", size, mlsd_time(facts.get("modify")))
