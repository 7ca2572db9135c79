"""Directory listing pages of every server family, parsed with the real HTML parser."""
# The pages are kept as the servers write them, long lines included.
# ruff: noqa: E501

from __future__ import annotations

import pytest

from indexer.storages.html_listing import Link, parse_listing

PAGE = "http://h.example/livrable/"

NGINX = """<html>\r
<head><title>Index of /livrable/</title></head>\r
<body>\r
<h1>Index of /livrable/</h1><hr><pre><a href="../">../</a>\r
<a href="lot%201/">lot 1/</a>                                             28-Nov-2026 10:50                   -\r
<a href="LISEZMOI.txt">LISEZMOI.txt</a>                                       28-Nov-2026 10:50                  39\r
<a href="secteur%20%C3%A9t%C3%A9.tif">secteur été.tif</a>                                    28-Nov-2026 10:51               17607\r
</pre><hr></body>\r
</html>
"""

APACHE_FANCY = """<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN" "http://www.w3.org/TR/html4/strict.dtd">
<html>
 <head>
  <title>Index of /livrable</title>
 </head>
 <body>
<h1>Index of /livrable</h1>
<pre><img src="/icons/blank.gif" alt="Icon "> <a href="?C=N;O=D">Name</a>                    <a href="?C=M;O=A">Last modified</a>      <a href="?C=S;O=A">Size</a>  <a href="?C=D;O=A">Description</a><hr><img src="/icons/back.gif" alt="[PARENTDIR]"> <a href="/">Parent Directory</a>                             -
<img src="/icons/text.gif" alt="[TXT]"> <a href="LISEZMOI.txt">LISEZMOI.txt</a>            2026-11-28 10:50   39
<img src="/icons/folder.gif" alt="[DIR]"> <a href="lot%201/">lot 1/</a>                  2026-11-28 10:50    -
<img src="/icons/image2.gif" alt="[IMG]"> <a href="secteur%20%C3%A9t%C3%A9.tif">secteur été.tif</a>         2026-11-28 10:51   17K
<hr></pre>
</body></html>
"""

APACHE_TABLE = """<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN" "http://www.w3.org/TR/html4/strict.dtd">
<html><head><title>Index of /livrable</title></head><body>
<h1>Index of /livrable</h1>
  <table>
   <tr><th valign="top">&nbsp;</th><th><a href="?C=N;O=D">Name</a></th><th><a href="?C=M;O=A">Last modified</a></th><th><a href="?C=S;O=A">Size</a></th><th><a href="?C=D;O=A">Description</a></th></tr>
   <tr><th colspan="5"><hr></th></tr>
<tr><td valign="top">&nbsp;</td><td><a href="/">Parent Directory</a></td><td>&nbsp;</td><td align="right">  - </td><td>&nbsp;</td></tr>
<tr><td valign="top">&nbsp;</td><td><a href="LISEZMOI.txt">LISEZMOI.txt</a></td><td align="right">2026-11-28 10:50</td><td align="right">39</td><td>&nbsp;</td></tr>
<tr><td valign="top">&nbsp;</td><td><a href="lot%201/">lot 1/</a></td><td align="right">2026-11-28 10:50  </td><td align="right">  - </td><td>&nbsp;</td></tr>
<tr><td valign="top">&nbsp;</td><td><a href="secteur%20%C3%A9t%C3%A9.tif">secteur été.tif</a></td><td align="right">2026-11-28 10:51  </td><td align="right"> 17K</td><td>&nbsp;</td></tr>
   <tr><th colspan="5"><hr></th></tr>
</table>
</body></html>
"""

APACHE_PLAIN = """<html><head><title>Index of /livrable</title></head><body>
<h1>Index of /livrable</h1>
<ul><li><a href="/"> Parent Directory</a></li>
<li><a href="LISEZMOI.txt"> LISEZMOI.txt</a></li>
<li><a href="lot%201/"> lot 1/</a></li>
<li><a href="secteur%20%C3%A9t%C3%A9.tif"> secteur été.tif</a></li>
</ul>
</body></html>
"""

LIGHTTPD = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Index of /livrable/</title></head><body>
<h2>Index of /livrable/</h2>
<div class="list">
<table summary="Directory Listing" cellpadding="0" cellspacing="0">
<thead><tr><th class="n">Name</th><th class="m">Last Modified</th><th class="s">Size</th><th class="t">Type</th></tr></thead>
<tbody>
<tr class="d"><td class="n"><a href="../">..</a>/</td><td class="m">&nbsp;</td><td class="s">- &nbsp;</td><td class="t">Directory</td></tr>
<tr class="d"><td class="n"><a href="lot%201/">lot 1</a>/</td><td class="m">2026-Nov-28 10:50:12</td><td class="s">- &nbsp;</td><td class="t">Directory</td></tr>
<tr><td class="n"><a href="LISEZMOI.txt">LISEZMOI.txt</a></td><td class="m">2026-Nov-28 10:50:12</td><td class="s">0.1K</td><td class="t">text/plain</td></tr>
<tr><td class="n"><a href="secteur%20%C3%A9t%C3%A9.tif">secteur été.tif</a></td><td class="m">2026-Nov-28 10:51:40</td><td class="s">17.1K</td><td class="t">image/tiff</td></tr>
</tbody>
</table>
</div>
<div class="foot">lighttpd/1.4.69</div>
<script type="text/javascript">
// <!-- var a = '<a href="never/">never</a>';
</script>
</body></html>
"""

IIS = """<html><head><title>h.example - /livrable/</title></head><body><H1>h.example - /livrable/</H1><hr>

<pre><A HREF="/">[To Parent Directory]</A><br><br> 11/28/2026 10:50 AM        &lt;dir&gt; <A HREF="/livrable/lot%201/">lot 1</A><br> 11/28/2026 10:50 AM           39 <A HREF="/livrable/LISEZMOI.txt">LISEZMOI.txt</A><br>Saturday, November 28, 2026 10:51 PM        17607 <A HREF="/livrable/secteur%20%C3%A9t%C3%A9.tif">secteur été.tif</A><br></pre><hr></body></html>
"""

HTTP_SERVER = """<!DOCTYPE HTML>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Directory listing for /livrable/</title>
</head>
<body>
<h1>Directory listing for /livrable/</h1>
<hr>
<ul>
<li><a href="LISEZMOI.txt">LISEZMOI.txt</a></li>
<li><a href="lot%201/">lot 1/</a></li>
<li><a href="secteur%20%C3%A9t%C3%A9.tif">secteur été.tif</a></li>
</ul>
<hr>
</body>
</html>
"""

LOT = f"{PAGE}lot%201/"
TXT = f"{PAGE}LISEZMOI.txt"
TIF = f"{PAGE}secteur%20%C3%A9t%C3%A9.tif"


@pytest.mark.parametrize(("html", "expected"), [
    (NGINX, {LOT: (True, None, "2026-11-28T10:50:00"), TXT: (False, 39, "2026-11-28T10:50:00"),
             TIF: (False, 17607, "2026-11-28T10:51:00")}),
    (APACHE_FANCY, {TXT: (False, 39, "2026-11-28T10:50:00"), LOT: (True, None, "2026-11-28T10:50:00"),
                    TIF: (False, None, "2026-11-28T10:51:00")}),
    (APACHE_TABLE, {TXT: (False, 39, "2026-11-28T10:50:00"), LOT: (True, None, "2026-11-28T10:50:00"),
                    TIF: (False, None, "2026-11-28T10:51:00")}),
    (APACHE_PLAIN, {TXT: (False, None, None), LOT: (True, None, None), TIF: (False, None, None)}),
    (LIGHTTPD, {LOT: (True, None, "2026-11-28T10:50:12"), TXT: (False, None, "2026-11-28T10:50:12"),
                TIF: (False, None, "2026-11-28T10:51:40")}),
    (IIS, {LOT: (True, None, "2026-11-28T10:50:00"), TXT: (False, 39, "2026-11-28T10:50:00"),
           TIF: (False, 17607, "2026-11-28T22:51:00")}),
    (HTTP_SERVER, {TXT: (False, None, None), LOT: (True, None, None), TIF: (False, None, None)}),
], ids=["nginx", "apache-fancy", "apache-table", "apache-plain", "lighttpd", "iis", "http.server"])
def test_each_server_family(html: str, expected: dict[str, tuple[bool, int | None, str | None]]) -> None:
    links = parse_listing(html, PAGE)
    assert {link.url: (link.is_dir, link.size, link.mtime) for link in links} == expected
    assert sorted(link.name for link in links) == ["LISEZMOI.txt", "lot 1", "secteur été.tif"]


def test_a_plain_page_keeps_only_the_direct_children_of_the_page() -> None:
    html = """<html><body><h1>Livrable PCRS 2024</h1>
    <p>Dalles : <a href="dalles/a.tif">a.tif</a> (12 Mo), <a href="dalles/">toutes les dalles</a>,
    <a href="b%C3%A9.tif">bé</a>, <a href="caf%E9.tif">latin-1</a>, <a href="/livrable/c d.tif">raw space</a>,
    <a href="http://h.example/livrable/d.tif">absolute</a>, <a href=" e.tif ">spaces around</a></p>
    <p><a href="?C=M;O=A">trier</a> <a href="../">parent</a> <a href="sub/../../evil/">up</a>
    <a href="./">self</a> <a href=".">dot</a> <a href="ftp://h.example/livrable/x.tif">ftp</a>
    <a href="https://h.example/livrable/x.tif">https</a> <a href="http://h.example:81/livrable/x.tif">port</a>
    <a href="http://other.example/livrable/x.tif">other host</a> <a href="#top">top</a> <a href="mailto:a@b">mail</a>
    <a href="javascript:void(0)">js</a> <a href="x%2Fy.tif">encoded slash</a> <a href="f.tif?download=1">query</a>
    <a href="/elsewhere/g.tif">elsewhere</a> <a>no href</a> <a href="d.tif">again</a></p></body></html>"""
    links = parse_listing(html, PAGE)
    assert [(link.name, link.is_dir) for link in links] == [
        ("dalles", True), ("bé.tif", False), ("café.tif", False), ("c d.tif", False), ("d.tif", False),
        ("e.tif", False)]
    assert links[3].url == f"{PAGE}c%20d.tif"
    assert links[2].url == f"{PAGE}caf%E9.tif"  # requested exactly as the server spelled it


def test_a_link_to_the_page_itself_or_its_parent_never_leads_up() -> None:
    html = '<a href="/livrable/">same</a><a href="/">root</a><a href="/livrable/lot%201/../">up</a>'
    assert parse_listing(html, f"{PAGE}lot%201/") == []
    assert parse_listing(html, PAGE) == []


def test_escapes_are_compared_case_insensitively() -> None:
    html = '<a href="/livrable/secteur%20%c3%a9t%c3%a9/a.tif">a.tif</a>'
    assert parse_listing(html, f"{PAGE}secteur%20%C3%A9t%C3%A9/") == [
        Link(f"{PAGE}secteur%20%C3%A9t%C3%A9/a.tif", False, None, None)]


def test_an_icon_link_before_the_name_link_keeps_the_details() -> None:
    html = ('<pre><a href="a.tif"><img src="/icons/image2.gif" alt="[IMG]"></a> <a href="a.tif">a.tif</a>'
            "   2024-01-02 10:00  812\n</pre>")
    assert parse_listing(html, PAGE) == [Link(f"{PAGE}a.tif", False, 812, "2024-01-02T10:00:00")]


def test_an_iis_folder_without_a_trailing_slash_is_a_folder() -> None:
    html = '<pre> 1/2/2024  9:05 AM        &lt;dir&gt; <A HREF="/livrable/lot">lot</A><br></pre>'
    assert parse_listing(html, PAGE) == [Link(f"{PAGE}lot/", True, None, "2024-01-02T09:05:00")]


@pytest.mark.parametrize("href", ["a_1.tif", "./a_1.tif", "/livrable/a_1.tif", "http://h.example/livrable/a_1.tif",
                                  "../livrable/a_1.tif"])
def test_every_spelling_of_a_child_link_gives_the_same_entry(href: str) -> None:
    html = f'<pre><a href="../">../</a>\n<a href="{href}">a_1.tif</a>  02-Jan-2024 10:00  812\n<a href=".">.</a>\n</pre>'
    assert parse_listing(html, PAGE) == [Link(f"{PAGE}a_1.tif", False, 812, "2024-01-02T10:00:00")]
    assert parse_listing(html, PAGE)[0].name == "a_1.tif"
