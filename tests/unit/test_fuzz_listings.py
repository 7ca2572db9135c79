"""Property-based fuzzing of the listing parsers (HTML pages, FTP LIST lines, MLSD facts): on any input
they return entries or no entry, never raise, never hang (pytest-timeout bounds each test), and what
they return is a direct child of its folder."""

from __future__ import annotations

import ftplib
from collections.abc import Callable, Iterator
from datetime import datetime
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer.storages.crawl import Child
from indexer.storages.ftp_listing import mlsd_child, parse_list_line
from indexer.storages.html_listing import Link, parse_listing

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PAGES = ["http://h.test/", "http://h.test/livrable/", "https://h.test:8443/a%20b/%C3%A9t%C3%A9/", "http://h.test/x"]

# Pieces of the pages servers write, and of what breaks parsers.
HTML_PIECES = st.sampled_from([
    '<a href="', '">', '</a>', "<a href=", "<a href='", "'>", "<", ">", "/>", "<!--", "-->", "<![CDATA[", "]]>",
    "<![if", "<!DOCTYPE html>", "<!x", "<?", "?>", "<script>", "</script>", "<style>", "<pre>", "</pre>", "<tr>",
    "<td>", "</td>", "<br>", "<li>", "&#", "&#x", "&amp;", "&lt;", ";", '"', "'", " ", "\n", "\r\n", "\t", "\x00",
    "../", "./", ".", "..", "/", "//", "%", "%2F", "%2e%2e/", "%ZZ", "%C3%A9", "%E9", "é", "?C=N;O=D", "#top",
    "mailto:", "javascript:", "http://", "https://h.test/", "http://[", "http://[::1", "//other.test/", "ftp://",
    "lot 1/", "a.tif", "b.jp2", " 02-Jan-2024 10:00 ", " 2024-01-02 10:00:00 ", "2024-Jan-02 10:00:00",
    "Tuesday, January 2, 2024 10:00 AM", "1/2/2024 10:00 AM", "13/45/2024 99:99", "31-Feb-2024 10:00",
    " 12K ", " 1.5M ", " 123456 ", " - ", "9" * 40, "<DIR>", "&lt;dir&gt;",
])
HTML = st.lists(st.one_of(HTML_PIECES, st.text(max_size=12)), max_size=80).map("".join)


def check_links(links: list[Link], page: str) -> None:
    """Every link is a direct child of the page, described consistently."""
    base = urlsplit(page)
    folder = base.path if base.path.endswith("/") else base.path + "/"
    assert len({link.url for link in links}) == len(links)
    for link in links:
        target = urlsplit(link.url)
        assert (target.scheme, target.netloc, target.query, target.fragment) == (base.scheme, base.netloc, "", "")
        relative = target.path[len(folder):]
        assert target.path.startswith(folder) and relative and "/" not in relative.rstrip("/")
        assert link.name not in ("", ".", "..") and "/" not in link.name
        assert link.is_dir == target.path.endswith("/")
        assert link.size is None or (not link.is_dir and 0 <= link.size < 10**20)
        assert link.mtime is None or datetime.fromisoformat(link.mtime)


@pytest.mark.timeout(300)
@FUZZ
@given(html=HTML, page=st.sampled_from(PAGES))
def test_any_listing_page_gives_children_of_the_page(html: str, page: str) -> None:
    check_links(parse_listing(html, page), page)


@pytest.mark.timeout(300)
@FUZZ
@given(html=st.text(max_size=3000), page=st.sampled_from(PAGES))
def test_any_text_gives_children_of_the_page(html: str, page: str) -> None:
    check_links(parse_listing(html, page), page)


@pytest.mark.parametrize(("found", "html", "page"), [
    (0, '<a href="http://[x/">x</a><a href="//[::1">y</a>', "http://h.test/"),  # urljoin raised ValueError
    (1, '<a href="a.tif">a.tif</a> ' + "9" * 5000, "http://h.test/"),  # int() raised past 4,300 digits
    (1, "<![a[ x]]><a href='a.tif'>a</a>", "http://h.test/"),  # HTMLParser raised AssertionError
])
def test_pages_that_made_the_parser_raise(found: int, html: str, page: str) -> None:
    links = parse_listing(html, page)
    check_links(links, page)
    assert len(links) == found


HOSTILE_PAGES: dict[str, Callable[[int], str]] = {
    # Each took Python's HTML parser or our date patterns quadratic time (minutes at these sizes, hours at
    # the 16 MiB a listing may weigh): one `<` it never sees closed, then it scans to the end for each.
    "unclosed tags": lambda n: "<a " * n,
    "unclosed comments": lambda n: "<!--" * n,
    "unclosed quotes": lambda n: '<a href=">' * (n // 4),
    "processing instructions": lambda n: "<? >" * n,
    "a long line of letters after a link": lambda n: '<a href="a.tif">a.tif</a> ' + "a" * (n * 4),
    "a long line of letters before a link": lambda n: "a" * (n * 4) + '<a href="a.tif">a.tif</a>',
    "weekday names": lambda n: ('<a href="a.tif">a</a>' + "Monday, " * 40 + "\n") * (n // 300),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", sorted(HOSTILE_PAGES))
def test_hostile_pages_parse_in_linear_time(kind: str) -> None:
    page = HOSTILE_PAGES[kind](100_000)  # about 300 KB
    check_links(parse_listing(page, "http://h.test/"), "http://h.test/")


# FTP: LIST lines, Unix and DOS styles, made of the pieces they have and of what breaks them.
SPACES = st.sampled_from([" ", "  ", "\t", " " * 300])
NUMBERS = st.one_of(st.integers(0, 10**12).map(str), st.sampled_from(["9" * 30, "9" * 5000, "٣", "²", "-1", ""]))
NAMES = st.one_of(st.text(min_size=1, max_size=40),
                  st.sampled_from([".", "..", "a/b", "../x", "a -> ..", " -> ", "lot 1", "a\x00b", "é.tif"]))
UNIX_LINES = st.builds(
    lambda kind, perms, parts, name: kind + perms + "".join(parts) + name,
    st.sampled_from(list("-dlbcps?")), st.sampled_from(["rw-r--r--", "rwxrwxrwx+", "rw-", "x" * 12]),
    st.lists(st.one_of(SPACES, NUMBERS, st.sampled_from(["user", "group", "Jan", "feb", "Xyz", "29", "31", "10:00",
                                                         "99:99", "2023", "0000", "1"])), max_size=14),
    NAMES)
DOS_LINES = st.builds(
    lambda date, time, size, name: f"{date}{time}{size}{name}",
    st.sampled_from(["01-02-24 ", "13-45-2024  ", "1-1-1 ", "٠١-٠٢-٢٤ "]),
    st.sampled_from(["10:00AM ", "99:99PM  ", "10:00 am ", "1:00"]),
    st.one_of(NUMBERS.map(lambda n: n + " "), st.just("<DIR>  ")), NAMES)
NOWS = st.sampled_from([datetime(2024, 2, 29, 12), datetime(2025, 1, 1), datetime(1, 1, 1, 0, 0)])


def check_child(child: Child | None) -> None:
    """No entry, or one a folder can hold."""
    if child is None:
        return
    assert child.name not in ("", ".", "..") and "/" not in child.name and "\0" not in child.name
    assert child.size is None or (not child.is_dir and 0 <= child.size < 10**20)
    assert child.mtime is None or datetime.fromisoformat(child.mtime)


@pytest.mark.timeout(300)
@FUZZ
@given(line=st.one_of(UNIX_LINES, DOS_LINES, st.text(max_size=300)), now=NOWS)
def test_any_list_line_gives_an_entry_or_none(line: str, now: datetime) -> None:
    check_child(parse_list_line(line, now))


@pytest.mark.parametrize("line", [
    "-rw-r--r-- 1 u g " + "9" * 5000 + " Jan 1 10:00 a.tif",  # int() raised past 4,300 digits
    "01-02-24 10:00AM " + "9" * 5000 + " a.tif",
    "-rw-r--r-- 1 u g 10 Jan 1 10:00 a/../../x.tif",  # a name no folder can hold
])
def test_list_lines_that_made_the_parser_raise_are_no_entry(line: str) -> None:
    assert parse_list_line(line, datetime(2024, 6, 1)) is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("line", [
    "-rw-r--r-- " + " " * 8180 + "x",  # every way of splitting the spaces was tried: seconds per line
    "-rw-r--r-- 1" + " 1" * 4090,
    "-rw-r--r-- " + " \t" * 4090,
    "01-02-24 10:00AM" + " " * 8170,
])
def test_a_long_list_line_parses_in_linear_time(line: str) -> None:
    for _ in range(200):  # a listing of such lines, ftplib's longest (8 KiB)
        assert parse_list_line(line, datetime(2024, 6, 1)) is None


class ReplayedFTP(ftplib.FTP):
    """ftplib's own MLSD parsing, fed lines a server would send instead of a connection's."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__()
        self.lines = lines

    def retrlines(self, cmd: str, callback: Callable[[str], object] | None = None) -> str:
        assert callback is not None
        for line in self.lines:
            callback(line)
        return "226 Transfer complete"


FACT_PIECES = st.sampled_from(["type=file;", "type=dir;", "type=cdir;", "type=OS.unix=symlink;", "size=12;",
                               "size=²;", "size=٣;", "size=" + "9" * 5000 + ";", "size=;", "modify=20240102100000;",
                               "modify=99999999999999;", "modify=2024;", "modify=٢٠٢٤٠١٠٢١٠٠٠٠٠;", "=;", ";", "=",
                               "perm=r;", "unique=1;"])
MLSD_LINES = st.builds(lambda facts, name: "".join(facts) + " " + name, st.lists(FACT_PIECES, max_size=8), NAMES)


def mlsd_children(lines: list[str]) -> Iterator[Child | None]:
    for name, facts in ReplayedFTP(lines).mlsd("/"):
        yield mlsd_child(name, facts)


@pytest.mark.timeout(300)
@FUZZ
@given(lines=st.lists(st.one_of(MLSD_LINES, st.text(max_size=200)), max_size=20))
def test_any_mlsd_line_gives_an_entry_or_none(lines: list[str]) -> None:
    for child in mlsd_children(lines):
        check_child(child)


@pytest.mark.parametrize("line", ["type=file;size=²; a.tif", "type=file;size=" + "9" * 5000 + "; a.tif"])
def test_mlsd_sizes_that_made_the_parser_raise_are_unknown(line: str) -> None:
    assert list(mlsd_children([line])) == [Child("a.tif", False, None, None)]
