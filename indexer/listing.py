"""Parse the HTML directory listings web servers generate (nginx, Apache, lighttpd, http.server…).

Pure functions: a page's HTML and URL in, the entries it links to out. The crawl itself, and the
rule that it never leaves its root, live in `storage.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from html.parser import HTMLParser
from urllib.parse import unquote, urljoin, urlsplit


@dataclass(frozen=True, slots=True)
class Link:
    """One entry of a listing page."""

    url: str
    is_dir: bool
    size: int | None
    mtime: str | None


class _AnchorParser(HTMLParser):
    """Collects each anchor's href with the text that follows it, up to the next anchor."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[str, list[str]]] = []
        self._in_anchor = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href is not None:
                self.anchors.append((href, []))
                self._in_anchor = True
        elif tag in ("tr", "li", "br") and self.anchors:
            # A new row: what follows no longer describes the previous link.
            self.anchors[-1][1].append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._in_anchor = False

    def handle_data(self, data: str) -> None:
        if self.anchors and not self._in_anchor:
            self.anchors[-1][1].append(data)


_DATE_PATTERNS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (re.compile(r"\d{1,2}-[A-Za-z]{3}-\d{4} \d{2}:\d{2}(?::\d{2})?"), ("%d-%b-%Y %H:%M:%S", "%d-%b-%Y %H:%M")),
    (re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(?::\d{2})?"),
     ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M")),
    (re.compile(r"\d{4}-[A-Za-z]{3}-\d{2} \d{2}:\d{2}(?::\d{2})?"), ("%Y-%b-%d %H:%M:%S", "%Y-%b-%d %H:%M")),
)
_SIZE = re.compile(r"^\s*(-|\d+(?:\.\d+)?)\s*([KMGTP]i?B?|[kmgtp]|B|bytes)?\s*(?:$|\s)")


def _parse_details(text: str) -> tuple[str | None, int | None]:
    """The modification time (ISO 8601) and exact size in bytes shown after a link, if any."""
    text = text.split("\n", 1)[0] if text.strip().count("\n") else text
    mtime = None
    rest = text
    for pattern, formats in _DATE_PATTERNS:
        match = pattern.search(text)
        if match:
            for fmt in formats:
                try:
                    mtime = datetime.strptime(match.group(0), fmt).isoformat()
                    break
                except ValueError:
                    continue
            rest = text[match.end():]
            break
    size = None
    sized = _SIZE.match(rest)
    if sized and sized.group(1) != "-" and sized.group(2) in (None, "B", "bytes"):
        if "." not in sized.group(1):
            size = int(sized.group(1))
    return mtime, size


def parse_listing(html: str, page_url: str) -> list[Link]:
    """Entries of a listing page that lie strictly below it, without duplicates.

    Parent links, sort and query links, fragments, other hosts or schemes and links that lead
    back up are dropped: a crawl that follows the result never leaves the page's folder.
    """
    parser = _AnchorParser()
    parser.feed(html)
    parser.close()
    base = urlsplit(page_url)
    base_path = base.path if base.path.endswith("/") else base.path + "/"
    links: dict[str, Link] = {}
    for href, tail in parser.anchors:
        if not href or href.startswith(("#", "?", "mailto:", "javascript:")):
            continue
        target = urlsplit(urljoin(page_url, href))
        if target.scheme != base.scheme or target.netloc != base.netloc:
            continue
        if target.query or not target.path.startswith(base_path):
            continue
        relative = target.path[len(base_path):]
        if not relative or relative.strip("/") in ("", ".", ".."):
            continue
        name = unquote(relative.rstrip("/"))
        if "/" in name or name in (".", ".."):
            # Only direct children: deeper links are reached through their own folder.
            continue
        is_dir = relative.endswith("/")
        mtime, size = _parse_details("".join(tail))
        url = f"{base.scheme}://{base.netloc}{target.path}"
        links.setdefault(url, Link(url=url, is_dir=is_dir, size=None if is_dir else size, mtime=mtime))
    return list(links.values())
