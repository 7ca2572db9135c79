"""Property-based fuzzing of the TIFF and JPEG 2000 header readers: on any bytes they return a header or a
classified finding, never raise, never hang (pytest-timeout bounds each test)."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin

from indexer.models import Dalle, DalleProblem, FileEntry, SkipReason
from indexer.read import parse_dalle
from indexer.read.jp2 import Jp2Header, read_jp2_header
from indexer.read.tiff import TiffHeader, read_tiff_header
from indexer.read.view import ByteView, Finding

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def valid(kind: str) -> bytes:
    """A small valid file of each kind the readers see."""
    profiles = {
        "tiff": {"driver": "GTiff", "tiled": True, "blockxsize": 16, "blockysize": 16, "compress": "deflate"},
        "bigtiff": {"driver": "GTiff", "BIGTIFF": "YES", "ENDIANNESS": "BIG"},
        "jp2": {"driver": "JP2OpenJPEG", "GMLJP2": "YES"},
    }
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "v.img"
        with rasterio.open(path, "w", width=32, height=32, count=3, dtype="uint8", crs="EPSG:2154",
                           transform=from_origin(700000, 6600200, 1, 1), **profiles[kind]) as dst:
            dst.write(np.ones((3, 32, 32), "uint8"))
        return path.read_bytes()


@st.composite
def mutated(draw: st.DrawFn, kind: str) -> bytes:
    """A valid file with some bytes overwritten, cut short or with bytes inserted."""
    data = bytearray(valid(kind))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["set", "cut", "insert", "int"]))
        if action == "set":
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at:]
            if not data:
                break
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:  # a large or odd number where a length or an offset may be
            value = draw(st.sampled_from([0, 1, 2, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, len(data), len(data) + 1]))
            data[at:at + 4] = value.to_bytes(4, draw(st.sampled_from(["little", "big"])))
    return bytes(data)


def view(data: bytes, prefix: int) -> ByteView:
    return ByteView(data[:prefix], len(data), lambda start, end: data[start:end])


def check(result: object) -> None:
    assert isinstance(result, TiffHeader | Jp2Header | Finding)
    if isinstance(result, Finding):
        assert isinstance(result.reason, SkipReason) and result.detail


@pytest.mark.timeout(300)
@FUZZ
@given(st.one_of(mutated("tiff"), mutated("bigtiff"), st.binary(max_size=512).map(lambda b: b"II*\x00" + b),
                 st.binary(max_size=512).map(lambda b: b"MM\x00+\x00\x08\x00\x00" + b)),
       st.sampled_from([16, 256, 16384]))
def test_tiff_reader_never_raises(data: bytes, prefix: int) -> None:
    check(read_tiff_header(view(data, prefix)))


@pytest.mark.timeout(300)
@FUZZ
@given(st.one_of(mutated("jp2"), st.binary(max_size=512).map(lambda b: b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b),
                 st.binary(max_size=512).map(lambda b: b"\xff\x4f\xff\x51" + b)),
       st.sampled_from([16, 256, 16384]))
def test_jp2_reader_never_raises(data: bytes, prefix: int) -> None:
    check(read_jp2_header(view(data, prefix)))


class Bytes:
    """A storage of one file held in memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read_range(self, path: str, start: int, end: int) -> bytes:
        return self.data[start:end]


@pytest.mark.timeout(300)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.one_of(mutated("tiff"), mutated("bigtiff"), mutated("jp2")), st.sampled_from(["a.tif", "a.jp2"]))
def test_a_mutated_dalle_is_a_record_whatever_gdal_makes_of_it(data: bytes, name: str) -> None:
    # The same examples every run: what GDAL itself does with them is outside the indexer's control.
    record = parse_dalle(Bytes(data), FileEntry(name, len(data)), data[:16384])
    assert isinstance(record, Dalle | DalleProblem)
