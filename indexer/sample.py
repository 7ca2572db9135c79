"""Generate a sample livrable: a grid of real dalles, a hole, sub-folders and a few bad files.

Used by ``make demo``, the tests and the benchmark. Deterministic: the same call writes the same
files, so expected outputs can be spelled out.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

LAMBERT93 = "EPSG:2154"


def write_dalle(path: Path, origin: tuple[float, float], pixels: int = 400, resolution_m: float = 0.5,
                crs: str | None = LAMBERT93, driver: str = "GTiff", compress: str = "deflate",
                reversible: bool = False, georeferenced: bool = True, sparse: bool = False) -> Path:
    """Write one dalle whose upper-left corner is `origin`, `pixels` wide and high, RGB bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile: dict[str, object] = {"driver": driver, "width": pixels, "height": pixels, "count": 3, "dtype": "uint8"}
    if georeferenced:
        profile.update(crs=crs, transform=from_origin(origin[0], origin[1], resolution_m, resolution_m))
    if driver == "GTiff":
        profile.update(tiled=True, blockxsize=256, blockysize=256, compress=compress, photometric="RGB")
        if compress == "jpeg":
            profile.update(photometric="YCbCr", jpeg_quality=80)
        if sparse:
            profile.update(sparse_ok=True)
    else:
        profile.update(reversible="YES" if reversible else "NO", quality=100 if reversible else 25,
                       blockxsize=min(pixels, 1024), blockysize=min(pixels, 1024))
    gradient = (np.add.outer(np.arange(pixels), np.arange(pixels)) % 256).astype("uint8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            if not sparse:
                dst.write(np.stack([gradient, gradient[::-1], gradient.T]))
    for aux in path.parent.glob(path.name + ".aux.xml"):
        aux.unlink()
    return path


@dataclass(frozen=True, slots=True)
class SampleSpec:
    """The shape of a sample livrable."""

    cols: int = 7
    rows: int = 7
    pixels: int = 400
    resolution_m: float = 0.5
    x0: float = 651000.0
    y0: float = 6862000.0
    hole: tuple[int, int] | None = (3, 3)
    bad_files: bool = True

    @property
    def tile_m(self) -> float:
        """Side of a dalle in metres."""
        return self.pixels * self.resolution_m


def dalle_path(spec: SampleSpec, col: int, row: int) -> str:
    """Where the sample puts the dalle of a grid cell: two lots, names with a space and an accent."""
    x = int(spec.x0 + col * spec.tile_m)
    y = int(spec.y0 - row * spec.tile_m)
    folder = "lot 1" if row < spec.rows // 2 else "lot 2/secteur été"
    kind = (col + row) % 7
    ext = ".jp2" if kind == 6 else ".tif"
    return f"{folder}/PCRS_{x}_{y}_L93{ext}"


def make_sample_livrable(root: Path, spec: SampleSpec = SampleSpec()) -> list[str]:
    """Write the sample livrable under `root`; returns the paths of the valid dalles, sorted."""
    compressions = ["jpeg", "jpeg", "jpeg", "lzw", "deflate", "jpeg"]
    valid = []
    for row in range(spec.rows):
        for col in range(spec.cols):
            if (col, row) == spec.hole:
                continue
            rel = dalle_path(spec, col, row)
            origin = (spec.x0 + col * spec.tile_m, spec.y0 - row * spec.tile_m)
            kind = (col + row) % 7
            if rel.endswith(".jp2"):
                write_dalle(root / rel, origin, spec.pixels, spec.resolution_m, driver="JP2OpenJPEG",
                            reversible=(col % 2 == 0))
            else:
                write_dalle(root / rel, origin, spec.pixels, spec.resolution_m, compress=compressions[kind])
            valid.append(rel)
    if spec.bad_files:
        write_bad_files(root / "anomalies", (spec.x0, spec.y0 + 10 * spec.tile_m), spec)
        (root / "LISEZMOI.txt").write_text("Livrable PCRS raster, dalles de 200 m.\n", encoding="utf-8")
    return sorted(valid)


BAD_FILES = {
    "anomalies/vide.tif": "empty",
    "anomalies/jamais_ecrite.tif": "empty",
    "anomalies/tronquee.tif": "corrupt",
    "anomalies/tronquee.jp2": "corrupt",
    "anomalies/illisible.tif": "corrupt",
    "anomalies/sans_georef.tif": "not_georeferenced",
    "anomalies/proprietaire.ecw": "unsupported",
}
"""The bad files of the sample and the reason each must be skipped for."""


def write_bad_files(folder: Path, origin: tuple[float, float], spec: SampleSpec) -> None:
    """One file for each reason a dalle is skipped."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vide.tif").write_bytes(b"")
    write_dalle(folder / "jamais_ecrite.tif", origin, spec.pixels, spec.resolution_m, sparse=True)
    for name, driver in (("tronquee.tif", "GTiff"), ("tronquee.jp2", "JP2OpenJPEG")):
        path = write_dalle(folder / name, origin, spec.pixels, spec.resolution_m, driver=driver,
                           compress="deflate")
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) * 2 // 3)
    (folder / "illisible.tif").write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    write_dalle(folder / "sans_georef.tif", origin, spec.pixels, spec.resolution_m, georeferenced=False)
    (folder / "proprietaire.ecw").write_bytes(b"\x01\x02ECW-like content no open driver reads" * 8)
