"""Embedded demo dataset: a small taxonomy of synthetic "organisms", generated in seconds.

A real tree of ``families x genera x species`` (3 x 3 x 3 by default). Every
image shows one organism whose look follows its lineage:

- family -> body shape (ellipse, triangle, diamond, ...),
- genus -> palette (body and background colours),
- species -> pattern on the body (stripes, dots, checks, ...),

with random position, size, rotation, lighting and noise, so a classifier has
to learn each rank's cue. Metadata is correlated with the taxa: each family
lives in its own region (latitude/longitude), each genus peaks in its own
season (date observed), each species at its own elevation. A few rows have an
unknown species (``taxa_L10 == 0``), as real data does.

The files are JPEGs, an ``observations.csv`` and a ``labels.h5`` built from that
CSV by ``taxaug.data.build_from_csv`` (what ``taxaug-data build --from-csv``
runs), so the demo exercises the user's own path.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["add_arguments", "generate_demo", "render_organism", "run"]

_SHAPES = ("ellipse", "triangle", "diamond", "square", "pentagon")
_PATTERNS = ("stripes", "dots", "checks", "vstripes", "rings")
# (body, pattern, background) per genus; distinct hues so palettes separate genera
_PALETTES = (
    ((220, 60, 50), (250, 220, 60), (40, 70, 40)),
    ((50, 110, 220), (240, 240, 240), (90, 70, 40)),
    ((60, 180, 80), (30, 30, 30), (170, 160, 130)),
    ((230, 140, 30), (60, 20, 90), (40, 60, 90)),
    ((150, 60, 190), (120, 230, 200), (60, 60, 60)),
    ((240, 200, 210), (180, 30, 60), (30, 90, 80)),
    ((40, 40, 40), (230, 120, 30), (150, 190, 220)),
    ((200, 200, 60), (30, 80, 200), (110, 50, 40)),
    ((30, 190, 200), (200, 40, 120), (200, 190, 170)),
    ((130, 90, 50), (240, 240, 150), (70, 110, 60)),
    ((250, 250, 250), (20, 120, 60), (120, 40, 40)),
    ((180, 30, 30), (40, 200, 230), (220, 220, 180)),
)
_REGIONS = ((48.0, 8.0), (-12.0, -60.0), (35.0, 135.0), (-25.0, 135.0), (40.0, -100.0))


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    corners = {"triangle": 3, "diamond": 4, "square": 4, "pentagon": 5}[shape]
    offset = angle + (math.pi / 4 if shape == "square" else 0.0)
    aspect = 0.65 if shape == "diamond" else 1.0
    pts = []
    for i in range(corners):
        a = offset + 2 * math.pi * i / corners
        pts.append((cx + r * aspect * math.cos(a), cy + r * math.sin(a)))
    return pts


def _draw_pattern(draw: ImageDraw.ImageDraw, pattern: str, size: int, colour, rng: np.random.Generator) -> None:
    step = max(4, size // int(rng.integers(5, 8)))
    phase = int(rng.integers(0, step))
    if pattern == "stripes":
        for y in range(-step + phase, size + step, step):
            draw.rectangle([0, y, size, y + step // 2 - 1], fill=colour)
    elif pattern == "vstripes":
        for x in range(-step + phase, size + step, step):
            draw.rectangle([x, 0, x + step // 2 - 1, size], fill=colour)
    elif pattern == "dots":
        rad = max(1, step // 4)
        for y in range(phase, size, step):
            for x in range(phase, size, step):
                draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=colour)
    elif pattern == "checks":
        for y in range(-step + phase, size + step, step):
            for x in range(-step + phase, size + step, step):
                if ((x - phase) // step + (y - phase) // step) % 2 == 0:
                    draw.rectangle([x, y, x + step - 1, y + step - 1], fill=colour)
    elif pattern == "rings":
        c = size / 2
        for rad in range(step, size, step):
            draw.ellipse([c - rad, c - rad, c + rad, c + rad], outline=colour, width=max(1, step // 3))


def render_organism(family: int, genus: int, species: int, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """One RGB image of an organism of the given (0-based) family, genus and species-within-genus."""
    body, accent, background = (np.array(c, dtype=np.float64) for c in _PALETTES[genus % len(_PALETTES)])
    jitter = lambda c: tuple(int(v) for v in np.clip(c + rng.normal(0, 12, 3), 0, 255))  # noqa: E731
    img = Image.new("RGB", (size, size), jitter(background))
    # background clutter: a few faint blobs so the body is not the only structure
    clutter = ImageDraw.Draw(img)
    for _ in range(3):
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(size * 0.05, size * 0.15)
        clutter.ellipse([x - r, y - r, x + r, y + r], fill=jitter(background * 0.8 + 30))

    shape = _SHAPES[family % len(_SHAPES)]
    cx, cy = size / 2 + rng.uniform(-0.12, 0.12) * size, size / 2 + rng.uniform(-0.12, 0.12) * size
    r = size * rng.uniform(0.28, 0.4)
    mask = Image.new("L", (size, size), 0)
    mdraw = ImageDraw.Draw(mask)
    if shape == "ellipse":
        ry = r * rng.uniform(0.55, 0.75)
        mdraw.ellipse([cx - r, cy - ry, cx + r, cy + ry], fill=255)
    else:
        mdraw.polygon(_polygon(shape, cx, cy, r, rng.uniform(-0.3, 0.3) - math.pi / 2), fill=255)

    skin = Image.new("RGB", (size, size), jitter(body))
    _draw_pattern(ImageDraw.Draw(skin), _PATTERNS[species % len(_PATTERNS)], size, jitter(accent), rng)
    img.paste(skin, (0, 0), mask)

    light = rng.uniform(0.8, 1.2)
    arr = np.asarray(img, dtype=np.float32) * light + rng.normal(0, 8, (size, size, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=0.6))
    return img


def _rows(families: int, genera: int, species: int, per_species: int, null_species_ratio: float, seed: int):
    """Label and metadata arrays for every row, in a shuffled order."""
    rng = np.random.default_rng(seed)
    lineages = [(f, g, s) for f in range(families) for g in range(genera) for s in range(species)]
    order = np.repeat(np.arange(len(lineages)), per_species)
    rng.shuffle(order)
    n = order.size
    fam = np.array([lineages[i][0] for i in order])
    gen_local = np.array([lineages[i][1] for i in order])
    sp_local = np.array([lineages[i][2] for i in order])
    gen_global = fam * genera + gen_local
    sp_global = gen_global * species + sp_local
    # raw taxon ids look like real ones: unrelated numbers per rank, 0 = unknown
    taxa_l30 = (100 + fam).astype(np.uint32)
    taxa_l20 = (2000 + gen_global).astype(np.uint32)
    taxa_l10 = (30000 + sp_global).astype(np.uint32)
    unknown = rng.random(n) < null_species_ratio
    taxa_l10[unknown] = 0

    region = np.array([_REGIONS[f % len(_REGIONS)] for f in fam])
    lat = np.clip(region[:, 0] + rng.normal(0, 4, n), -89, 89).astype(np.float32)
    lon = (((region[:, 1] + rng.normal(0, 6, n)) + 180) % 360 - 180).astype(np.float32)
    peak_day = (gen_global * 41) % 365
    day = ((peak_day + rng.normal(0, 18, n)) % 365).astype(int)
    year = rng.integers(2015, 2024, n)
    dates = [
        (_dt.date(int(y), 1, 1) + _dt.timedelta(days=int(d))).isoformat() + "T12:00:00" for y, d in zip(year, day)
    ]
    elevation = np.clip(150 + 120 * sp_global + rng.normal(0, 90, n), 0, None).astype(np.float32)
    return {
        "family": fam,
        "genus": gen_local,
        "species": sp_local,
        "taxa_L10": taxa_l10,
        "taxa_L20": taxa_l20,
        "taxa_L30": taxa_l30,
        "lat": lat,
        "lon": lon,
        "dates": dates,
        "elevation": elevation,
    }


def generate_demo(
    out_dir: str | Path,
    *,
    seed: int = 0,
    families: int = 3,
    genera: int = 3,
    species: int = 3,
    per_species: int = 40,
    image_size: int = 64,
    null_species_ratio: float = 0.03,
    overwrite: bool = False,
) -> Path:
    """Write the demo dataset under `out_dir` (``images/*.jpg`` + ``labels.h5``); return the labels.h5 path.

    Deterministic for a given `seed`. Refuses to overwrite an existing
    labels.h5 unless `overwrite` is true.
    """
    for name, value, low in (
        ("families", families, 1),
        ("genera", genera, 1),
        ("species", species, 1),
        ("per_species", per_species, 1),
        ("image_size", image_size, 16),
    ):
        if int(value) < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if genera > len(_PALETTES) or species > len(_PATTERNS) or families > len(_SHAPES):
        raise ValueError(
            f"the demo renders at most {len(_SHAPES)} families, {len(_PALETTES)} genera per family and "
            f"{len(_PATTERNS)} species per genus; got {families}, {genera}, {species}"
        )
    if not 0.0 <= null_species_ratio < 1.0:
        raise ValueError(f"null_species_ratio must be in [0, 1), got {null_species_ratio}")
    out = Path(out_dir)
    labels_path = out / "labels.h5"
    if labels_path.exists() and not overwrite:
        raise FileExistsError(f"{labels_path} exists; pass overwrite=True (--overwrite) to regenerate it")
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)

    rows = _rows(families, genera, species, per_species, null_species_ratio, seed)
    n = rows["family"].size
    identifiers = [f"demo_{i:05d}.jpg" for i in range(n)]
    rng = np.random.default_rng(seed + 1)
    for i, ident in enumerate(identifiers):
        img = render_organism(int(rows["family"][i]), int(rows["genus"][i] + rows["family"][i] * genera),
                              int(rows["species"][i]), rng, image_size)
        img.save(images_dir / ident, quality=90)

    return _build_labels(out, identifiers, rows)


def _build_labels(out: Path, identifiers: list[str], rows: dict) -> Path:
    """labels.h5 through ``taxaug-data build --from-csv`` (the builder users run on their own data)."""
    import csv

    from taxaug.data.build import build_from_csv

    csv_path = out / "observations.csv"
    columns = ["identifier", "taxa_L10", "taxa_L20", "taxa_L30", "lat", "lon", "date", "elevation"]
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for i, ident in enumerate(identifiers):
            species = rows["taxa_L10"][i]
            writer.writerow([
                ident, species if species else "", rows["taxa_L20"][i], rows["taxa_L30"][i],
                f"{rows['lat'][i]:.5f}", f"{rows['lon'][i]:.5f}", rows["dates"][i], f"{rows['elevation'][i]:.1f}",
            ])
    result = build_from_csv(csv_path, out, images_dir=out / "images", images="none", overwrite=True, progress=False)
    return Path(result.labels_path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``taxaug-data demo``."""
    parser.add_argument("--out", required=True, help="folder to write images/ and labels.h5 into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", type=int, default=3)
    parser.add_argument("--genera", type=int, default=3, help="genera per family")
    parser.add_argument("--species", type=int, default=3, help="species per genus")
    parser.add_argument("--per-species", type=int, default=40, help="images per species")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--overwrite", action="store_true", help="regenerate when labels.h5 already exists")


def run(args: argparse.Namespace) -> int:
    """Entry of ``taxaug-data demo``: generate and print where it went."""
    path = generate_demo(
        args.out,
        seed=args.seed,
        families=args.families,
        genera=args.genera,
        species=args.species,
        per_species=args.per_species,
        image_size=args.image_size,
        overwrite=args.overwrite,
    )
    print(f"demo dataset written: {path} (images in {path.parent / 'images'})")
    return 0
