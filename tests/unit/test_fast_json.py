"""The export's fast JSON path (orjson) gives exactly the bytes and values of `json`: the feature
texts of `indexer.geojson.page_texts` against `json`'s encoder, and the records' metadata decoding
against `json.loads`, on values whose spelling differs between the two libraries."""

from __future__ import annotations

import json
import math
import random
import struct
from typing import Any

import numpy as np
import pytest

from indexer import geojson
from indexer.geojson import DALLE_PROPERTIES, DallePage
from indexer.store.records import _meta

TRICKY = [0.1, 1e-7, -1e-7, 5e-05, 1e-05, 0.0001, 0.00012, 651000.0, 6862000.123, -0.0, 0.0, 2.5, 1e15, 1e16,
          1.2345678901234568e17, 1e22, 1.7976931348623157e308, 5e-324, -3.1234567, 2.5812689147505154e-07]


def _properties(**values: Any) -> dict[str, Any]:
    properties: dict[str, Any] = dict.fromkeys(DALLE_PROPERTIES)
    return properties | values


def _page(rings: np.ndarray, properties: list[dict[str, Any]]) -> DallePage:
    return DallePage(rings, properties)


def _expected(page: DallePage) -> list[str]:
    return [geojson._COMPACT.encode(f) for f in geojson.page_features(page)]


def test_tricky_floats_strings_and_integers_are_written_as_json_writes_them() -> None:
    values = np.array(TRICKY + [1.0] * (-len(TRICKY) % 10), dtype=np.float64).reshape(-1, 5, 2)
    names = ["é è ç — Œuvre", 'quote " backslash \\ slash /', "line\nfeed\ttab\r\b\f", "\x00\x1f\x7f\u2028\u2029",
             "日本語 🗺"]
    properties = [_properties(nomImage=names[i % len(names)], chemin=f"{names[i % len(names)]}/{i}.tif",
                              tailleFichier=[0, 2**53 + 1, 2**63 - 1, 2**64 - 1, 2**70, -(2**63), -(2**65)][i % 7],
                              resolution=[5, 5.0, 1e-7, 0.1, 20.5][i % 5], focale=[None, 100, 1e-5][i % 3],
                              open=bool(i % 2))
                  for i in range(len(values))]
    page = _page(values, properties)
    assert list(geojson.page_texts(page)) == _expected(page)


def test_random_doubles_are_written_as_json_writes_them() -> None:
    rng = random.Random(14)
    doubles = [struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(20_000)]
    doubles = [d for d in doubles if math.isfinite(d)][:10_000]
    doubles += [round(rng.uniform(-6, 10), 7) for _ in range(10_000)]  # WGS84 lon/lat of France, 7 decimals
    rings = np.array(doubles, dtype=np.float64).reshape(-1, 5, 2)
    page = _page(rings, [_properties(resolution=float(r[0, 0])) for r in rings])
    assert list(geojson.page_texts(page)) == _expected(page)


@pytest.mark.parametrize("where", ["ring", "resolution"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_what_is_not_json_is_refused_as_json_refuses_it(where: str, value: float) -> None:
    rings = np.ones((1, 5, 2))
    properties = _properties()
    if where == "ring":
        rings[0, 2, 1] = value
    else:
        properties["resolution"] = value
    page = _page(rings, [properties])
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        _expected(page)
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        list(geojson.page_texts(page))


@pytest.mark.parametrize("text", [
    '{"width":4000,"corners":[[651000.0,6862000.0],[0.1,1e-7]],"resolution_cm":5.0,"open":true,"epsg":null}',
    '{"a":123456789012345678901234567890}', '{"a":-9223372036854775809}', '{"a":18446744073709551615}',
    '{"a":0.00012345678901234568}', '{"a":1e400}', '{"a":-1e400}', '{"a":NaN}', '{"a":Infinity}',
    '{"a":"\\ud800"}', '{"a":"é\\u00e9\\n"}', '{"a":-0.0,"b":-0,"c":1E5}', '{"a":1,"a":2}',
])
def test_metadata_decodes_to_what_json_loads_gives(text: str) -> None:
    decoded, expected = _meta(text), json.loads(text)
    assert repr(decoded) == repr(expected)
    assert json.dumps(decoded) == json.dumps(expected)
