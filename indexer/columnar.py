"""The export as FlatGeobuf or GeoParquet: pages of features as Arrow record batches, streamed to a file.

Each page (a `geojson.DallePage`, or a list of livrable features) becomes one record batch, its
properties typed by `geojson.PROPERTY_TYPES`, so memory holds a page or two whatever the count:

- FlatGeobuf (GDAL through pyogrio, which reads the batches as one Arrow stream): WKB geometry in
  WGS84 lon/lat (``OGC:CRS84``), with its spatial index (a packed Hilbert R-tree), which GDAL
  builds when the file is closed from a small entry per feature kept meanwhile (about 100
  bytes: 100 MB for 1,000,000 features).
- GeoParquet 1.1 (pyarrow): the geometry GeoArrow-encoded (``polygon`` for dalles,
  ``multipolygon`` for livrables, x/y structs), a ``bbox`` covering column (``xmin, ymin, xmax,
  ymax``), row groups of `ROW_GROUP_PAGES` pages (zstd), and the ``geo`` metadata, with the bbox
  of all features, in the footer written last.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import shapely
import shapely.geometry

from indexer.geojson import DALLE_PROPERTIES, LIVRABLE_PROPERTIES, PROPERTY_TYPES, DallePage

ROW_GROUP_PAGES = 4
"""Pages gathered into one GeoParquet row group (20,000 dalles with the export's pages)."""
CRS = "OGC:CRS84"

_ARROW_TYPES: dict[type, pa.DataType] = {
    str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_(), list: pa.list_(pa.string())}
_XY = pa.struct([pa.field("x", pa.float64(), nullable=False), pa.field("y", pa.float64(), nullable=False)])
_RING = pa.list_(pa.field("vertices", _XY, nullable=False))
_POLYGON = pa.list_(pa.field("rings", _RING, nullable=False))
_MULTIPOLYGON = pa.list_(pa.field("polygons", _POLYGON, nullable=False))
_BBOX = pa.struct([pa.field(name, pa.float64(), nullable=False) for name in ("xmin", "ymin", "xmax", "ymax")])
_WKB = pa.field("geometry", pa.binary(), metadata={"ARROW:extension:name": "geoarrow.wkb",
                                                   "ARROW:extension:metadata": json.dumps({"crs": CRS})})


def _fields(names: tuple[str, ...]) -> list[pa.Field]:
    return [pa.field(name, _ARROW_TYPES[PROPERTY_TYPES.get(name, str)]) for name in names]


def _columns(names: tuple[str, ...], properties: list[dict[str, Any]]) -> list[pa.Array]:
    return [pa.array([p[name] for p in properties], type=_ARROW_TYPES[PROPERTY_TYPES.get(name, str)])
            for name in names]


def dalle_schema(parquet: bool) -> pa.Schema:
    """The record batches of dalles: properties, then the geometry (and its bbox, for GeoParquet)."""
    if parquet:
        return pa.schema([*_fields(DALLE_PROPERTIES), pa.field("geometry", _POLYGON, nullable=False),
                          pa.field("bbox", _BBOX, nullable=False)])
    return pa.schema([*_fields(DALLE_PROPERTIES), _WKB])


def livrable_schema(parquet: bool) -> pa.Schema:
    """The record batches of livrables, as `dalle_schema`; a livrable without emprise has a null geometry."""
    if parquet:
        return pa.schema([*_fields(LIVRABLE_PROPERTIES), pa.field("geometry", _MULTIPOLYGON),
                          pa.field("bbox", _BBOX)])
    return pa.schema([*_fields(LIVRABLE_PROPERTIES), _WKB])


def _bbox_array(bounds: np.ndarray, mask: np.ndarray | None = None) -> pa.StructArray:
    """Boxes (n, 4: xmin, ymin, xmax, ymax) as the bbox covering column."""
    return pa.StructArray.from_arrays([pa.array(bounds[:, i]) for i in range(4)], fields=list(_BBOX),
                                      mask=None if mask is None else pa.array(mask))


def dalle_batch(page: DallePage, parquet: bool) -> pa.RecordBatch:
    """One page of dalles as a record batch of `dalle_schema`."""
    rings = page.rings
    count = len(rings)
    columns = _columns(DALLE_PROPERTIES, page.properties)
    if not parquet:
        wkb = shapely.to_wkb(shapely.polygons(rings))
        return pa.RecordBatch.from_arrays([*columns, pa.array(wkb, type=pa.binary())], schema=dalle_schema(False))
    xy = rings.reshape(-1, 2)
    vertices = pa.StructArray.from_arrays([pa.array(xy[:, 0]), pa.array(xy[:, 1])], fields=list(_XY))
    ring_array = pa.ListArray.from_arrays(pa.array(np.arange(0, 5 * count + 1, 5, dtype=np.int32)), vertices,
                                          type=_RING)
    polygons = pa.ListArray.from_arrays(pa.array(np.arange(count + 1, dtype=np.int32)), ring_array, type=_POLYGON)
    bounds = np.column_stack([rings[:, :, 0].min(axis=1), rings[:, :, 1].min(axis=1),
                              rings[:, :, 0].max(axis=1), rings[:, :, 1].max(axis=1)])
    return pa.RecordBatch.from_arrays([*columns, polygons, _bbox_array(bounds)], schema=dalle_schema(True))


def livrable_batch(features: list[dict[str, Any]], parquet: bool) -> pa.RecordBatch:
    """Livrable features as a record batch of `livrable_schema`."""
    columns = _columns(LIVRABLE_PROPERTIES, [f["properties"] for f in features])
    shapes = [shapely.geometry.shape(f["geometry"]) if f.get("geometry") else None for f in features]
    if not parquet:
        wkb = [None if s is None else shapely.to_wkb(s) for s in shapes]
        return pa.RecordBatch.from_arrays([*columns, pa.array(wkb, type=pa.binary())], schema=livrable_schema(False))
    missing = np.array([s is None for s in shapes])
    multi = [shapely.MultiPolygon() if s is None else s if s.geom_type == "MultiPolygon" else shapely.MultiPolygon([s])
             for s in shapes]
    _, coords, (ring_offsets, polygon_offsets, multi_offsets) = shapely.to_ragged_array(multi, include_z=False)
    vertices = pa.StructArray.from_arrays([pa.array(coords[:, 0]), pa.array(coords[:, 1])], fields=list(_XY))
    rings = pa.ListArray.from_arrays(pa.array(ring_offsets.astype(np.int32)), vertices, type=_RING)
    polygons = pa.ListArray.from_arrays(pa.array(polygon_offsets.astype(np.int32)), rings, type=_POLYGON)
    geometry = pa.ListArray.from_arrays(pa.array(multi_offsets.astype(np.int32)), polygons, type=_MULTIPOLYGON,
                                        mask=pa.array(missing))
    bounds = np.array(shapely.bounds(multi), dtype=np.float64).reshape(-1, 4)
    return pa.RecordBatch.from_arrays([*columns, geometry, _bbox_array(np.nan_to_num(bounds), missing)],
                                      schema=livrable_schema(True))


def write_fgb(path: Path, layer: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
    """Write record batches of `dalle_schema` or `livrable_schema` (WKB) as one FlatGeobuf layer, with
    its spatial index; returns the number of features."""
    from pyogrio.raw import write_arrow

    count = 0

    def counted() -> Iterator[pa.RecordBatch]:
        nonlocal count
        for batch in batches:
            count += batch.num_rows
            yield batch

    stream = pa.RecordBatchReader.from_batches(schema, counted())
    write_arrow(stream, str(path), layer=layer, driver="FlatGeobuf", geometry_name="geometry",
                geometry_type="Polygon" if layer == "dalles" else "Unknown", crs=CRS, SPATIAL_INDEX="YES")
    return count


def write_parquet(path: Path, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
    """Write record batches of `dalle_schema` or `livrable_schema` (GeoArrow) as GeoParquet 1.1, row
    groups of `ROW_GROUP_PAGES` batches, the ``geo`` metadata last; returns the number of features."""
    import pyarrow.parquet as pq

    count = 0
    extent = [np.inf, np.inf, -np.inf, -np.inf]
    waiting: list[pa.RecordBatch] = []
    encoding = "polygon" if schema.field("geometry").type == _POLYGON else "multipolygon"
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        def flush() -> None:
            if waiting:
                table = pa.Table.from_batches(waiting, schema)
                writer.write_table(table, row_group_size=max(1, table.num_rows))
                waiting.clear()

        for batch in batches:
            count += batch.num_rows
            boxes = batch.column("bbox").drop_null()
            if len(boxes):
                extent = [min(extent[0], float(np.min(boxes.field("xmin")))),
                          min(extent[1], float(np.min(boxes.field("ymin")))),
                          max(extent[2], float(np.max(boxes.field("xmax")))),
                          max(extent[3], float(np.max(boxes.field("ymax"))))]
            waiting.append(batch)
            if len(waiting) == ROW_GROUP_PAGES:
                flush()
        flush()
        column: dict[str, Any] = {
            "encoding": encoding, "geometry_types": ["Polygon" if encoding == "polygon" else "MultiPolygon"],
            "orientation": "counterclockwise",
            "covering": {"bbox": {name: ["bbox", name] for name in ("xmin", "ymin", "xmax", "ymax")}}}
        if count and np.isfinite(extent).all():
            column["bbox"] = extent
        geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}
        writer.add_key_value_metadata({"geo": json.dumps(geo)})
    return count


def write_dalles(path: Path, pages: Iterable[DallePage], parquet: bool) -> int:
    """Write pages of dalles as GeoParquet (`parquet`) or FlatGeobuf; returns the number of features."""
    batches = (dalle_batch(page, parquet) for page in pages)
    if parquet:
        return write_parquet(path, dalle_schema(True), batches)
    return write_fgb(path, "dalles", dalle_schema(False), batches)


def write_livrables(path: Path, features: Iterable[dict[str, Any]], parquet: bool, page: int) -> int:
    """Write livrable features, `page` a batch, as GeoParquet (`parquet`) or FlatGeobuf; returns how many."""
    iterator = iter(features)
    batches = (livrable_batch(chunk, parquet) for chunk in iter(lambda: list(islice(iterator, page)), []))
    if parquet:
        return write_parquet(path, livrable_schema(True), batches)
    return write_fgb(path, "livrables", livrable_schema(False), batches)
