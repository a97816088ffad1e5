"""Memory and disk while an ImageNet-sized dataset (1,281,167 training samples) trains.

Generates the samples as WebDataset tar shards (not 1.28M loose files: on this disk a
file per image costs a 4 KiB block and an inode each, and creating them takes long),
8x8 JPEGs drawn from a small pool with random labels out of 1,000 classes, plus 50,000
test samples; loads them through spec.dataset (the header index, the three splits),
runs a few hundred shuffled, augmented loader steps with loader processes, and
records peak RSS (the training process plus its loader workers) and the disk used.
The generated shards are deleted at the end.

    .venv/bin/python -m benchmarks.data_scale [--samples 1281167] [--steps 300] [--workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks.common import WORK, header, save

IMAGENET_TRAIN = 1_281_167
IMAGENET_VAL = 50_000
PER_SHARD = 1_282  # 1,000 training shards, as ImageNet's usual WebDataset packing has
SIDE = 8
MIN_FREE = 8 * 2**30  # the shards take ~3.4 GB; leave the others room


class PeakRss:
    """Samples this process and its children (loader workers) every 0.2 s; keeps the peaks.

    rss sums each process's resident pages, counting the pages that forked workers
    share with their parent once per process; pss splits shared pages between their
    users, so it is the memory the processes really hold together.
    """

    def __init__(self) -> None:
        self.peak = self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> tuple[int, int]:
        me = psutil.Process()
        rss = pss = 0
        for proc in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):  # a worker just exited
                info = proc.memory_full_info()
                rss += info.rss
                pss += info.pss
        return rss, pss

    def _sample(self) -> None:
        rss, pss = self.now()
        self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def __enter__(self) -> PeakRss:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def jpeg_pool(n: int = 64) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    pool = []
    for _ in range(n):
        out = io.BytesIO()
        pixels = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(out, format="JPEG", quality=90)
        pool.append(out.getvalue())
    return pool


def generate(folder: Path, prefix: str, samples: int) -> int:
    """Shards of `samples` 8x8 JPEGs with .cls labels, written by webdataset's TarWriter.

    One full shard is written and copied for the others (its keys repeat across
    shards, which the per-shard index allows), so generating takes seconds, not the
    half hour a Python write of 2.5M tar members takes on this machine.
    """
    full, rest = divmod(samples, PER_SHARD)
    first = folder / f"{prefix}-{0:06d}.tar"
    _write_shard(first, PER_SHARD if full else rest, seed=1)
    for s in range(1, full):
        shutil.copyfile(first, folder / f"{prefix}-{s:06d}.tar")
    if full and rest:
        _write_shard(folder / f"{prefix}-{full:06d}.tar", rest, seed=2)
    return full + (1 if rest else 0)


def _write_shard(path: Path, samples: int, seed: int) -> None:
    import webdataset as wds

    rng = np.random.default_rng(seed)
    pool = jpeg_pool()
    # An integer mtime keeps tarfile in plain ustar: no pax header per member.
    with wds.TarWriter(str(path), mtime=0) as sink:
        for i in range(samples):
            image = pool[int(rng.integers(0, len(pool)))]
            sink.write({"__key__": f"{i:08d}", "jpg": image, "cls": int(rng.integers(0, 1000))})


def du(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def run(samples: int, steps: int, workers: int, batch: int) -> dict[str, Any]:
    import torch

    from kubeslim.api.spec import DatasetSpec, ModelSpec
    from kubeslim.data.datasets import Preprocess, load_splits, loader, train_augment
    from kubeslim.store.cache import cache_dir

    WORK.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(WORK).free < MIN_FREE:
        sys.exit(f"data_scale: less than {MIN_FREE >> 30} GiB free under {WORK}")
    tmp = Path(tempfile.mkdtemp(prefix="data-scale-", dir=WORK))
    try:
        t0 = time.monotonic()
        train_shards = generate(tmp, "train", samples)
        test_samples = min(IMAGENET_VAL, max(1, samples // 25))
        test_shards = generate(tmp, "test", test_samples)
        generate_s = time.monotonic() - t0
        spec = DatasetSpec.model_validate(
            {
                "uri": str(tmp / f"train-{{000000..{train_shards - 1:06d}}}.tar"),
                "testUri": str(tmp / f"test-{{000000..{test_shards - 1:06d}}}.tar"),
                "tuningFraction": 0.01,
                "mean": [0.5],
                "std": [0.25],
            }
        )
        model = ModelSpec.model_validate(
            {"architecture": "resnet18", "numClasses": 1000, "inputShape": [3, SIDE, SIDE]}
        )
        cache_before = du(cache_dir())
        with PeakRss() as index_rss:
            t0 = time.monotonic()
            splits = load_splits(spec, size=(SIDE, SIDE))
            index_s = time.monotonic() - t0
        rss_after_index, pss_after_index = PeakRss().now()
        pre = Preprocess(spec, model)
        augment = train_augment(spec, splits.train)
        with PeakRss() as train_rss:
            batches = loader(
                splits.train, batch, shuffle=True, seed=0, workers=workers, augment=augment
            )
            t0 = time.monotonic()
            seen = 0
            for step, (images, labels) in enumerate(batches):
                x = pre(images)
                seen += len(labels)
                if step == 0:
                    first_batch_s = time.monotonic() - t0
                    assert x.shape == (batch, 3, SIDE, SIDE)
                if step + 1 == steps:
                    break
            loop_s = time.monotonic() - t0
            del batches  # stops the loader workers
        return {
            "format": "WebDataset tar shards on local disk (not loose files)",
            "samples": {
                "train": len(splits.train),
                "tuning": len(splits.tuning),
                "test": len(splits.test),
                "generated": samples + test_samples,
            },
            "shards": train_shards + test_shards,
            "imageSide": SIDE,
            "generateSeconds": round(generate_s, 1),
            "datasetDiskBytes": du(tmp),
            "indexSeconds": round(index_s, 1),
            "indexPeakRssBytes": index_rss.peak,
            "indexPeakPssBytes": index_rss.peak_pss,
            "rssAfterIndexBytes": rss_after_index,
            "pssAfterIndexBytes": pss_after_index,
            "loader": {
                "batch": batch,
                "workers": workers,
                "steps": steps,
                "augment": getattr(augment, "__name__", type(augment).__name__),
            },
            "firstBatchSeconds": round(first_batch_s, 2),
            "imagesPerSecond": round(seen / loop_s, 1),
            "trainPeakRssBytes": train_rss.peak,
            "trainPeakPssBytes": train_rss.peak_pss,
            "extraDiskBytes": du(cache_dir()) - cache_before,
            "torchThreads": torch.get_num_threads(),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=IMAGENET_TRAIN)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", default="data_scale")
    args = parser.parse_args()
    result = run(args.samples, args.steps, args.workers, args.batch)
    save(args.out, {**header(), **result})


if __name__ == "__main__":
    main()
