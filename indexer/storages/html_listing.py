"""Parse the HTML directory listings web servers generate.

nginx autoindex, Apache mod_autoindex (plain list, FancyIndexing ``<pre>`` and HTMLTable, with
their sort links), lighttpd mod_dirlisting, IIS (date and size *before* each link, absolute
hrefs, ``[To Parent Directory]``), Python's ``http.server`` and plain pages of links.

Pure functions: a page's HTML and URL in, the entries it links to out. The crawl itself lives in
`storage.py`; the rule that it never leaves its root is enforced here, by keeping only the
direct children of the page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from html.parser import HTMLParser
from urllib.parse import quote, unquote, urljoin, urlsplit


@dataclass(frozen=True, slots=True)
class Link:
    """One entry of a listing page."""

    url: str
    is_dir: bool
    size: int | None
    mtime: str | None

    @property
    def name(self) -> str:
        """The entry's decoded name (percent-encoding undone, UTF-8 or else Latin-1)."""
        return decode_segment(self.url.rstrip("/").rsplit("/", 1)[-1])  # no query nor fragment: see parse_listing


def decode_segment(segment: str) -> str:
    """A percent-encoded path segment as text: UTF-8 when it decodes as such, else Latin-1."""
    try:
        return unquote(segment, errors="strict")
    except UnicodeDecodeError:
        return unquote(segment, encoding="latin-1")


def _normal_path(path: str) -> str:
    """A URL path percent-encoded one way: raw spaces and accents encoded, escapes upper-case."""
    encoded = quote(path, safe="/%:@!$&'()*+,;=~-._")
    return re.sub(r"%[0-9a-f]{2}", lambda m: m.group(0).upper(), encoded)


MAX_TAG_CHARS = 4096
"""Longest tag read as one: a ``<`` not closed within as many characters is text."""
MAX_DETAIL_CHARS = 256
"""Most characters read for a link's date and size, on its line before it and after it."""

_UNSAFE = re.compile(rf"<(?=!\[)|<(?![^<>]{{0,{MAX_TAG_CHARS}}}+>)")
"""What Python's HTML parser handles in quadratic time or refuses: a ``<`` its tag never closes
(it scans to the end of the page for each), a marked section ``<![`` (it raises)."""


def _defused(html: str) -> str:
    """The page with every `_UNSAFE` ``<`` written ``&lt;``: text to the parser, in linear time."""
    return _UNSAFE.sub("&lt;", html)


@dataclass(slots=True)
class _Anchor:
    href: str
    before: str
    after: str = ""


_BLOCK_TAGS = frozenset({"tr", "li", "br", "p", "div", "pre", "table", "tbody", "thead", "ul", "ol", "hr", "dt",
                         "dd", "h1", "h2", "h3", "body"})
_CELL_TAGS = frozenset({"td", "th"})


class _AnchorParser(HTMLParser):
    """Collects each anchor's href with the text on its line before it and after it.

    Rows, list items and line breaks end a line; table cells are separated by a space, so
    ``<td>10:38</td><td>39</td>`` reads ``10:38 39``.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[_Anchor] = []
        self._between: list[str] = []
        self._in_anchor = False

    def _flush(self) -> str:
        between = "".join(self._between)
        self._between = []
        if self.anchors:
            self.anchors[-1].after = between.split("\n", 1)[0][:MAX_DETAIL_CHARS]
        return between

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href is not None:
                between = self._flush()
                self.anchors.append(_Anchor(href.strip(), between.rsplit("\n", 1)[-1][-MAX_DETAIL_CHARS:]))
                self._in_anchor = True
        elif tag in _BLOCK_TAGS:
            self._between.append("\n")
        elif tag in _CELL_TAGS:
            self._between.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag == "a":
            self._in_anchor = False

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._in_anchor = False
        elif tag in _BLOCK_TAGS:
            self._between.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._in_anchor:
            self._between.append(data.replace("\r", ""))

    def close(self) -> None:
        super().close()
        self._flush()


_DATE_PATTERNS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    # nginx: 02-Jan-2024 10:00
    (re.compile(r"\d{1,2}-[A-Za-z]{3}-\d{4} \d{2}:\d{2}(?::\d{2})?"), ("%d-%b-%Y %H:%M:%S", "%d-%b-%Y %H:%M")),
    # Apache: 2024-01-02 10:00
    (re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(?::\d{2})?"),
     ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M")),
    # lighttpd: 2024-Jan-02 10:00:00
    (re.compile(r"\d{4}-[A-Za-z]{3}-\d{2} \d{2}:\d{2}(?::\d{2})?"), ("%Y-%b-%d %H:%M:%S", "%Y-%b-%d %H:%M")),
    # IIS: Tuesday, January 2, 2024 10:00 AM
    (re.compile(r"(?<![A-Za-z])[A-Za-z]{3,9}, [A-Za-z]{3,9} \d{1,2}, \d{4}\s+\d{1,2}:\d{2}(?:\s*[AaPp][Mm])?"),
     ("%A, %B %d, %Y %I:%M %p", "%A, %B %d, %Y %H:%M")),
    # IIS: 1/2/2024 10:00 AM (month first, as IIS writes it by default)
    (re.compile(r"\d{1,2}/\d{1,2}/\d{4}\s+\d{1,2}:\d{2}(?::\d{2})?(?:\s*[AaPp][Mm])?"),
     ("%m/%d/%Y %I:%M %p", "%m/%d/%Y %I:%M:%S %p", "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S")),
)
_SIZE = re.compile(r"^\s*(-|[0-9]{1,20}(?:\.[0-9]{1,20})?)\s*([KMGTP]i?B?|[kmgtp]|B|bytes)?\s*(?:$|\s)")
_DIR_MARK = re.compile(r"<dir>", re.IGNORECASE)
_PLAIN_HREF = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]*/?")
"""A relative link to a child named with characters URLs never escape (not ``.``, ``..``)."""


def _parse_date(text: str) -> tuple[str | None, str]:
    """The first date in `text` (ISO 8601) and the text after it; (None, text) when there is none."""
    for kind, (pattern, _) in enumerate(_DATE_PATTERNS):
        match = pattern.search(text)
        if not match:
            continue
        iso = _iso_date(kind, re.sub(r"\s+", " ", match.group(0)))
        if iso is not None:
            return iso, text[match.end():]
    return None, text


@lru_cache(maxsize=4096)
def _iso_date(kind: int, stamp: str) -> str | None:
    """A listing's date in ISO 8601, by the formats of its pattern; the files of a folder share a few."""
    for fmt in _DATE_PATTERNS[kind][1]:
        try:
            return datetime.strptime(stamp, fmt).isoformat()
        except ValueError:
            continue
    return None


def _parse_details(text: str) -> tuple[str | None, int | None]:
    """The modification time (ISO 8601) and exact size in bytes shown beside a link, if any.

    Sizes shown rounded (``2.1K``, ``17M``) are not exact and give None.
    """
    mtime, rest = _parse_date(text)
    size = None
    sized = _SIZE.match(rest)
    if sized and sized.group(1) != "-" and sized.group(2) in (None, "B", "bytes") and "." not in sized.group(1):
        size = int(sized.group(1))
    return mtime, size


def parse_listing(html: str, page_url: str) -> list[Link]:
    """Entries of a listing page that lie directly below it, without duplicates, in page order.

    Parent links, sort and query links, fragments, other hosts or schemes and links that lead
    back up or further down are dropped: a crawl that follows the result never leaves the
    page's folder. Details are read after the link (nginx, Apache, lighttpd) or, when there are
    none, before it (IIS), at most `MAX_DETAIL_CHARS` each side. Linear in the page's length,
    whatever it holds; never raises.
    """
    parser = _AnchorParser()
    parser.feed(_defused(html))
    parser.close()
    base = urlsplit(page_url)
    base_path = _normal_path(base.path if base.path.endswith("/") else base.path + "/")
    links: dict[str, Link] = {}
    for anchor in parser.anchors:
        href = anchor.href
        if _PLAIN_HREF.fullmatch(href):  # a child's plain name, as most servers write it: no URL parsing
            target_path = base_path + href
            relative = href
            name = href.rstrip("/")
        else:
            if not href or href.startswith(("#", "?", "mailto:", "javascript:")):
                continue
            try:
                target = urlsplit(urljoin(page_url, href))
            except ValueError:  # an address that does not parse ("http://[x/")
                continue
            if target.scheme != base.scheme or target.netloc != base.netloc:
                continue
            target_path = _normal_path(target.path)
            if target.query or not target_path.startswith(base_path):
                continue
            relative = target_path[len(base_path):]
            name = decode_segment(relative.rstrip("/"))
        if not name or "/" in relative.rstrip("/") or "/" in name or name in (".", ".."):
            # Only direct children: deeper links are reached through their own folder.
            continue
        mtime, size = _parse_details(anchor.after)
        if mtime is None and size is None:
            mtime, size = _parse_details(anchor.before)
        is_dir = relative.endswith("/") or bool(_DIR_MARK.search(anchor.before) or _DIR_MARK.search(anchor.after))
        path = target_path if target_path.endswith("/") or not is_dir else target_path + "/"
        url = f"{base.scheme}://{base.netloc}{path}"
        link = Link(url=url, is_dir=is_dir, size=None if is_dir else size, mtime=mtime)
        known = links.get(url)
        if known is None:
            links[url] = link
        elif (known.size is None and link.size is not None) or (known.mtime is None and link.mtime is not None):
            # An icon link before the name link (Apache with icons): keep the details found.
            links[url] = replace(known, size=known.size if known.size is not None else link.size,
                                 mtime=known.mtime or link.mtime)
    return list(links.values())
