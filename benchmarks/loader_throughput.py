"""Data-loader throughput on a JPEG ImageFolder with 0, 1 and 2 loader processes, as ratios.

A generated folder of 256x256 JPEGs (about ImageNet's decode cost per image, at a
smaller size), decoded to 224x224 and augmented with the ImageNet-style random-resized
crop and flip, as spec.dataset's defaults do for such data. The worker counts run in
interleaved rounds in one process, so load from other processes on the shared machine
hits every setting alike; throughput is counted from the first batch (worker start-up
is reported apart). The folder is deleted at the end.

    .venv/bin/python -m benchmarks.loader_throughput [--images 1200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import WORK, header, save

SIDE = 256
WORKERS = (0, 1, 2)
# In-process again with one torch thread, as loader workers run: per-image crops are
# tiny ops, and torch's intra-op threads cost more than they give on them when the
# machine is loaded, which would credit workers with a gain that is only threading.
IN_PROCESS_ONE_THREAD = "0-1thread"


def make_folder(root: Path, images: int, classes: int = 10) -> None:
    """Smooth random images (JPEG-compressible like photos), spread over class folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c:02d}").mkdir(parents=True)
    for i in range(images):
        small = rng.integers(0, 256, (SIDE // 16, SIDE // 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((SIDE, SIDE), Image.Resampling.BICUBIC)
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=90)
        (root / f"class{i % classes:02d}" / f"{i:06d}.jpg").write_bytes(out.getvalue())


def one_pass(ds: Any, workers: int, batch: int, seed: int) -> dict[str, float]:
    from kubeslim.data.augment import resized_crop_flip
    from kubeslim.data.datasets import loader

    t0 = time.monotonic()
    batches = loader(ds, batch, shuffle=True, seed=seed, workers=workers, augment=resized_crop_flip)
    it = iter(batches)
    next(it)
    first = time.monotonic()
    seen = sum(len(labels) for _, labels in it)
    end = time.monotonic()
    del it, batches
    return {"startupSeconds": first - t0, "imagesPerSecond": seen / (end - first)}


def run(images: int, rounds: int, batch: int) -> dict[str, Any]:
    import torch

    from kubeslim.data.datasets import SourceDataset
    from kubeslim.data.folder import load_image_folder

    WORK.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="loader-throughput-", dir=WORK))
    try:
        make_folder(tmp, images)
        parts = load_image_folder(str(tmp), (224, 224))
        ds = SourceDataset(parts.train)
        names = [str(w) for w in WORKERS] + [IN_PROCESS_ONE_THREAD]
        runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        threads = torch.get_num_threads()
        for r in range(rounds):
            for w in WORKERS:
                runs[str(w)].append(one_pass(ds, w, batch, seed=r))
            torch.set_num_threads(1)
            runs[IN_PROCESS_ONE_THREAD].append(one_pass(ds, 0, batch, seed=r))
            torch.set_num_threads(threads)
        rate = {n: statistics.median(x["imagesPerSecond"] for x in runs[n]) for n in names}
        return {
            "dataset": f"{images} JPEGs {SIDE}x{SIDE} in 10 class folders on local disk",
            "decodeTo": [3, 224, 224],
            "augment": "random-resized crop + flip",
            "batch": batch,
            "rounds": rounds,
            "torchThreads": threads,
            "imagesPerSecond": {n: round(rate[n], 1) for n in names},
            "ratioToInProcess": {n: round(rate[n] / rate["0"], 2) for n in names},
            "ratioToInProcessOneThread": {
                n: round(rate[n] / rate[IN_PROCESS_ONE_THREAD], 2) for n in names
            },
            "startupSeconds": {
                n: round(statistics.median(x["startupSeconds"] for x in runs[n]), 2) for n in names
            },
            "perRound": {n: [round(x["imagesPerSecond"], 1) for x in runs[n]] for n in names},
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", default="loader_throughput")
    args = parser.parse_args()
    save(args.out, {**header(), **run(args.images, args.rounds, args.batch)})


if __name__ == "__main__":
    main()
