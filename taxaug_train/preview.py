"""``taxaug-preview --config FILE.yaml --out grid.png``: one training batch after every augmentation.

The batch is the first one the trainer would train on (same sampler, loader, device and
algorithms, events fired as in training up to ``AFTER_DATALOADER``). Each cell shows the image
as the model receives it, with:

1. the sample's position in the batch and its labels: the finest rank's taxon name when the
   file carries ``taxon_names`` (as ``taxaug-data build`` writes them), else the class indices,
   finest rank first (``-`` for null); ``->`` and the partner's label when mixed;
2. the mixing partner and lam (the weight of the sample's own content), or ``not mixed``;
3. what the finest rank's target is now (the top classes, named when names are known, and their
   weights).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from taxaug.algorithms import Event

__all__ = ["HEADER_HEIGHT", "LINE_HEIGHT", "TEXT_LINES", "cell_lines", "class_names", "main", "preview_batch",
           "render_grid"]

LINE_HEIGHT = 12
TEXT_LINES = 3
HEADER_HEIGHT = 16


def _mixing_info(state: Any, n: int) -> tuple[torch.Tensor, torch.Tensor, str | None]:
    perm, lam, mixer = torch.arange(n), torch.ones(n), None
    for key, info in state.scratch.items():
        if isinstance(info, dict) and info.get("mixed") and "perm" in info:
            perm = info["perm"].detach().cpu().long()
            lam = torch.as_tensor(info["lam"], dtype=torch.float32).detach().cpu().expand(n).clone()
            mixer = f"{key} ({info.get('op', 'mix')}, level {info.get('level', '?')})"
    return perm, lam, mixer


def class_names(dataset: Any) -> dict[str, list[str]]:
    """Per rank, the taxon name of every class index (the null class is ``-``), from the file's
    ``taxon_names`` (``metadata/config_json``); ranks without names are left out. A folder-built
    name is its path (``family/genus/species``): the last part is shown."""
    raw = getattr(dataset, "config_json", None)
    try:
        config = json.loads(raw) if raw else {}
    except (TypeError, ValueError):
        return {}
    names = config.get("taxon_names") if isinstance(config, dict) else None
    out: dict[str, list[str]] = {}
    for rank, table in (names or {}).items():
        ids = getattr(dataset, "class_to_taxon_id", {}).get(rank)
        if not table or ids is None:
            continue
        out[rank] = ["-"] + [str(table.get(str(int(t)), f"#{int(t)}")).rsplit("/", 1)[-1] for t in ids[1:]]
    return out


def preview_batch(trainer: Any, *, max_batches: int = 10) -> dict[str, Any]:
    """A training batch after AFTER_DATALOADER, with labels and mixing info.

    It is the first batch the trainer would train on, unless a mixing algorithm left that one
    unmixed (its probability is below 1): then the following batches are drawn, up to
    `max_batches`, and the first mixed one is shown, so the grid shows what mixing does.
    """
    from taxaug_train.trainer import _EpochBatches

    state, engine = trainer.state, trainer.engine
    engine.run(Event.INIT, state)
    engine.run(Event.FIT_START, state)
    engine.run(Event.EPOCH_START, state)
    trainer.train_loader.batch_sampler = _EpochBatches(trainer.sampler, state.epoch, state.batch_in_epoch)
    batches = iter(trainer.train_loader)
    try:
        for attempt in range(max(1, max_batches)):
            engine.run(Event.BEFORE_DATALOADER, state)
            try:
                batch = trainer._to_device(next(batches))
            except StopIteration:
                break
            labels = {r: t.clone() for r, t in batch.targets.items()}
            batch_index = attempt
            state.batch = batch
            engine.run(Event.AFTER_DATALOADER, state)
            perm, lam, mixer = _mixing_info(state, state.batch.batch_size)
            if mixer is not None:
                break
            state.step += 1
            state.batch_in_epoch += 1
    finally:
        trainer.train_loader.close()
    return {"batch": state.batch, "labels": {r: t.cpu() for r, t in labels.items()}, "perm": perm, "lam": lam,
            "mixer": mixer, "ranks": list(trainer.ranks), "algorithms": [a.key for a in engine.algorithms],
            "batch_index": batch_index, "names": class_names(trainer.train_set)}


def _to_hwc_uint8(images: torch.Tensor) -> np.ndarray:
    x = images.detach().cpu()
    if x.dtype != torch.uint8:
        x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    x = x.contiguous()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).numpy()


def _label_text(labels: dict[str, torch.Tensor], ranks: Sequence[str], i: int,
                names: dict[str, list[str]] | None = None) -> str:
    """The finest rank's taxon name when known, else the class indices of every rank ("-" for null)."""
    if names and ranks[0] in names:
        return names[ranks[0]][int(labels[ranks[0]][i])]
    return "/".join(str(int(labels[r][i])) if int(labels[r][i]) else "-" for r in ranks)


def cell_lines(info: dict[str, Any], i: int) -> tuple[str, str, str]:
    """The three text lines under sample i: labels (and partner's), partner and lam, the finest target."""
    ranks, labels, perm, lam = info["ranks"], info["labels"], info["perm"], info["lam"]
    names = info.get("names") or {}
    finest = ranks[0]
    own = _label_text(labels, ranks, i, names)
    partner = int(perm[i])
    if partner != i:
        line1 = f"{i}: {own}->{_label_text(labels, ranks, partner, names)}"
        line2 = f"w/ {partner} lam {float(lam[i]):.2f}"
    else:
        line1, line2 = f"{i}: {own}", "not mixed"
    target = info["batch"].targets[finest][i]
    label = names[finest].__getitem__ if finest in names else str
    if target.ndim == 0:
        line3 = f"{finest[-3:]}: {label(int(target))}"
    else:
        w, k = target.float().topk(min(2, target.shape[0]))
        line3 = f"{finest[-3:]}: " + " ".join(f"{label(int(kk))}:{float(ww):.2f}" for ww, kk in zip(w, k) if ww > 0)
    return line1, line2, line3


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font: Any) -> str:
    """`text` cut (with "~") to fit `width` pixels, so long taxon names stay inside their cell."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "~", font=font) > width:
        text = text[:-1]
    return text + "~"


def render_grid(info: dict[str, Any], *, cols: int = 8, cell: int = 96, count: int | None = None) -> Image.Image:
    """The annotated grid as a PIL image: ``cols * cell`` wide, ``HEADER_HEIGHT + rows * (cell + text)`` high."""
    batch = info["batch"]
    n = batch.batch_size if count is None else min(count, batch.batch_size)
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    text_h = TEXT_LINES * LINE_HEIGHT
    width, height = cols * cell, HEADER_HEIGHT + rows * (cell + text_h)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    header = (f"batch {info.get('batch_index', 0)}; algorithms: {', '.join(info['algorithms']) or 'none'}; "
              f"mixed by: {info['mixer'] or 'nothing this batch'}")
    draw.text((2, 2), header, fill=(0, 0, 0), font=font)
    pixels = _to_hwc_uint8(batch.images[:n])
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y0 = c * cell, HEADER_HEIGHT + r * (cell + text_h)
        tile = Image.fromarray(pixels[i]).resize((cell, cell), Image.NEAREST)
        canvas.paste(tile, (x0, y0))
        for j, line in enumerate(cell_lines(info, i)):
            draw.text((x0 + 2, y0 + cell + j * LINE_HEIGHT), _fit(draw, line, cell - 4, font), fill=(0, 0, 0),
                      font=font)
        draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell + text_h - 1], outline=(200, 200, 200))
    return canvas


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="taxaug-preview", description="Write one augmented training batch as an "
                                "annotated PNG grid (labels, mixing partner, lam).")
    p.add_argument("--config", required=True, help="trainer YAML config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--count", type=int, default=32, help="samples shown (default 32)")
    p.add_argument("--cols", type=int, default=8)
    p.add_argument("--cell", type=int, default=96, help="pixels per image side")
    p.add_argument("--max-batches", type=int, default=10,
                   help="draw up to this many batches to find one that a mixing algorithm mixed (default 10)")
    args = p.parse_args(argv)
    from taxaug_train.config import ConfigError, load_config
    from taxaug_train.trainer import Trainer

    try:
        cfg = load_config(args.config, [*args.overrides, "train.progress_bar=false"])
        trainer = Trainer(cfg, write_files=False)
    except ConfigError as err:
        print(f"taxaug-preview: error: {err}", file=sys.stderr)
        return 2
    image = render_grid(preview_batch(trainer, max_batches=args.max_batches), cols=args.cols, cell=args.cell, count=args.count)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG")
    print(f"preview written: {out} ({image.width}x{image.height})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
