"""Data at scale: WebDataset shards on a volume and on S3, S3 image folders streamed
within a bounded cache (issue 9 item 3)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from kubeslim.api.spec import DatasetSpec, ModelSpec
from kubeslim.data.arrays import load_array_splits
from kubeslim.data.datasets import Preprocess, load_splits, loader
from kubeslim.errors import SpecError
from kubeslim.store import open_store
from kubeslim.store.cache import BoundedCache, byte_quantity, dataset_cache
from tests.s3.plugin import S3Server
from tests.test_store import s3_env

SIDE = 16


def _image(label: int, rng: np.random.Generator) -> bytes:
    """A JPEG whose dominant colour is its class (red 0, blue 1): learnable in one epoch."""
    pixels = rng.integers(0, 80, (SIDE, SIDE, 3), dtype=np.uint8)
    pixels[..., 0 if label == 0 else 2] += 170
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def write_shards(folder: Path, prefix: str, shards: int, per_shard: int, seed: int) -> None:
    """Shards written by the webdataset library itself (its TarWriter)."""
    import webdataset as wds

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with wds.TarWriter(str(folder / f"{prefix}-{s:06d}.tar")) as sink:
            for i in range(per_shard):
                label = int(rng.integers(0, 2))
                sink.write({"__key__": f"s{s}/{i:05d}", "jpg": _image(label, rng), "cls": label})


def write_folder(root: Path, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(("red", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i:04d}.jpg").write_bytes(_image(label, rng))


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Shard indexes and S3 caches of these tests stay in their tmp_path."""
    monkeypatch.setenv("KUBESLIM_CACHE", str(tmp_path / "cache"))


def _spec(**dataset: Any) -> DatasetSpec:
    return DatasetSpec.model_validate({"mean": [0.5], "std": [0.25], **dataset})


def train_and_evaluate(spec: DatasetSpec, workers: int = 2) -> float:
    """One epoch of a linear classifier through the real loader; test-split accuracy."""
    splits = load_splits(spec, size=(SIDE, SIDE))
    model_spec = ModelSpec.model_validate(
        {"architecture": "resnet18", "numClasses": 2, "inputShape": [3, SIDE, SIDE]}
    )
    pre = Preprocess(spec, model_spec)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIDE * SIDE, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    train = loader(splits.train, 16, shuffle=True, seed=1, workers=workers)
    for _ in range(2):
        for images, labels in train:
            loss = torch.nn.functional.cross_entropy(model(pre(images)), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    correct = seen = 0
    with torch.no_grad():
        for images, labels in loader(splits.test, 32, workers=workers):
            correct += int((model(pre(images)).argmax(1) == labels).sum())
            seen += len(labels)
    return correct / seen


def test_webdataset_shards_on_a_volume_train_and_evaluate(tmp_path: Path) -> None:
    write_shards(tmp_path / "wds", "train", shards=3, per_shard=40, seed=0)
    write_shards(tmp_path / "wds", "test", shards=1, per_shard=30, seed=1)
    spec = _spec(
        uri=str(tmp_path / "wds" / "train-{000000..000002}.tar"),
        testUri=str(tmp_path / "wds" / "test-000000.tar"),
        tuningFraction=0.1,
    )
    splits = load_array_splits(spec, (SIDE, SIDE))
    assert (len(splits.train), len(splits.tuning), len(splits.test)) == (108, 12, 30)
    assert splits.num_classes == 2
    assert train_and_evaluate(spec) >= 0.9


def test_a_folder_of_shards_holds_out_the_test_split(tmp_path: Path) -> None:
    write_shards(tmp_path / "wds", "part", shards=2, per_shard=50, seed=0)
    spec = _spec(uri=str(tmp_path / "wds"), validationFraction=0.2, tuningFraction=0.1)
    splits = load_array_splits(spec, (SIDE, SIDE))
    assert (len(splits.train), len(splits.tuning), len(splits.test)) == (72, 8, 20)
    image, label = splits.test[0]
    assert image.shape == (3, SIDE, SIDE) and label in (0, 1)


def test_the_shard_index_is_cached_until_a_shard_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubeslim.data import shards

    write_shards(tmp_path / "wds", "train", shards=2, per_shard=20, seed=0)
    spec = _spec(uri=str(tmp_path / "wds"))
    first = load_array_splits(spec, (SIDE, SIDE))
    scanned: list[str] = []
    scan = shards._samples

    def counted(files: Any, name: str) -> Any:
        scanned.append(name)
        return scan(files, name)

    monkeypatch.setattr(shards, "_samples", counted)
    again = load_array_splits(spec, (SIDE, SIDE))
    assert scanned == []  # both shards' headers came from the cache
    assert np.array_equal(again.train[3][0], first.train[3][0])
    write_shards(tmp_path / "wds", "train", shards=1, per_shard=25, seed=5)  # shard 0 changes
    changed = load_array_splits(spec, (SIDE, SIDE))
    assert scanned == ["train-000000.tar"]
    assert len(changed.train) + len(changed.tuning) + len(changed.test) == 45


def test_bad_shard_input_is_a_one_line_error_naming_the_field(tmp_path: Path) -> None:
    write_shards(tmp_path / "wds", "train", shards=1, per_shard=5, seed=0)
    cases = [
        ({"uri": str(tmp_path / "wds" / "train-{000000..000001}.tar")}, "spec.dataset.uri"),
        (
            {"uri": str(tmp_path / "wds/train-000000.tar"), "testUri": str(tmp_path / "x.tar")},
            "spec.dataset.testUri",
        ),
    ]
    for dataset, field in cases:
        with pytest.raises(SpecError) as err:
            load_array_splits(_spec(**dataset), (SIDE, SIDE))
        assert err.value.field == field and "\n" not in str(err.value)
    (tmp_path / "broken.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(SpecError, match=r"spec\.dataset\.uri"):
        load_array_splits(_spec(uri=str(tmp_path / "broken.tar")), (SIDE, SIDE))


def test_bounded_cache_evicts_least_recently_used(tmp_path: Path) -> None:
    assert byte_quantity("2Gi") == 2 * 2**30 and byte_quantity("500M") == 500 * 10**6
    cache = BoundedCache(tmp_path / "c", budget=1000)
    fetched: list[str] = []

    def fetch(name: str) -> bytes:
        fetched.append(name)
        return name.encode() * 100

    def read(name: str) -> bytes:
        return cache.read(name, lambda: fetch(name))

    for name in ("a", "b", "c"):  # 100 bytes each
        read(name)
    assert read("a") == b"a" * 100 and fetched == ["a", "b", "c"]  # a hit
    for i in range(12):
        read(f"n{i}")
        assert cache.used() <= 1000
    read("b")  # evicted by now: fetched again
    assert fetched.count("b") == 2


@pytest.fixture
def bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    s3_env(monkeypatch, tmp_path, s3_server.env())
    yield s3_server.create_bucket()


@pytest.mark.s3
def test_s3_image_folder_streams_within_the_cache_budget(bucket: str, tmp_path: Path) -> None:
    write_folder(tmp_path / "pets", per_class=60, seed=0)
    uri = f"s3://{bucket}/datasets/pets"
    open_store(uri).upload_tree(tmp_path / "pets", "")
    total = sum(p.stat().st_size for p in (tmp_path / "pets").rglob("*.jpg"))
    budget = total // 4
    spec = _spec(uri=uri, cacheBudget=str(budget))
    local = load_array_splits(_spec(uri=str(tmp_path / "pets")), (SIDE, SIDE))

    streamed = load_splits(spec, size=(SIDE, SIDE))

    cache = dataset_cache(uri, budget)
    assert cache.used() == 0  # listed, nothing fetched before the loader asks
    seen = []
    for images, _ in loader(streamed.train, 8, workers=2):
        seen += [x.numpy().tobytes() for x in images]
        assert cache.used() <= budget
    assert seen == [local.train[i][0].tobytes() for i in range(len(local.train))]
    assert 0 < cache.used() <= budget
    assert train_and_evaluate(spec) >= 0.9


@pytest.mark.s3
def test_s3_webdataset_shards_train_and_evaluate(bucket: str, tmp_path: Path) -> None:
    write_shards(tmp_path / "wds", "train", shards=4, per_shard=30, seed=0)
    write_shards(tmp_path / "wds", "test", shards=1, per_shard=30, seed=1)
    open_store(f"s3://{bucket}/wds").upload_tree(tmp_path / "wds", "")
    spec = _spec(
        uri=f"s3://{bucket}/wds/train-{{000000..000003}}.tar",
        testUri=f"s3://{bucket}/wds/test-000000.tar",
    )
    on_disk = load_array_splits(
        _spec(uri=str(tmp_path / "wds/train-{000000..000003}.tar"), testUri=spec.test_uri),
        (SIDE, SIDE),
    )
    from_s3 = load_array_splits(spec, (SIDE, SIDE))
    assert len(from_s3.train) == len(on_disk.train) == 108
    assert all(np.array_equal(from_s3.train[i][0], on_disk.train[i][0]) for i in (0, 50, 107))
    assert train_and_evaluate(spec) >= 0.9
    # Samples are ranged GETs: the shards are never copied to local disk.
    assert not any((tmp_path / "cache").rglob("*.tar"))
    missing = _spec(uri=f"s3://{bucket}/wds/train-{{000000..000009}}.tar")
    with pytest.raises(SpecError) as err:
        load_array_splits(missing, (SIDE, SIDE))
    assert err.value.field == "spec.dataset.uri" and "train-000004.tar" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_members_agree_with_tarfile(tmp_path: Path, fmt: int) -> None:
    from kubeslim.data.shards import tar_members

    path = tmp_path / "shard.tar"
    names = ["a.jpg", "a.cls", "deep/" * 20 + "b.jpg", "x" * 120 + ".png", "émoji.cls"]
    if fmt == tarfile.USTAR_FORMAT:
        names = [n for n in names if len(n) < 100 and n.isascii()]
    with tarfile.open(path, "w", format=fmt) as tar:
        for i, name in enumerate(names):
            data = bytes([i]) * (100 * i + 1)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1.5  # not an integer: pax writes a record for it
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        expected = [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]
    with open(path, "rb") as fh:
        assert list(tar_members(fh)) == expected


def test_kubeslim_run_prunes_quantizes_and_benchmarks_from_shards(tmp_path: Path) -> None:
    """The whole pipeline on WebDataset shards: the torch stages through the loader
    (loader processes, augmentation), the torch-free ones through the same index."""
    import json

    from tests.pipeline_helpers import kubeslim, manifest, write

    write_shards(tmp_path / "wds", "train", shards=3, per_shard=100, seed=0)
    write_shards(tmp_path / "wds", "test", shards=1, per_shard=60, seed=1)
    doc = manifest(
        model={"numClasses": 2, "inputShape": [3, SIDE, SIDE]},
        dataset={
            "name": None,
            "uri": str(tmp_path / "wds" / "train-{000000..000002}.tar"),
            "testUri": str(tmp_path / "wds" / "test-000000.tar"),
            "loaderWorkers": 1,
            "mean": [0.5],
            "std": [0.25],
        },
        artifacts={"uri": str(tmp_path / "artifacts")},
    )
    doc["spec"]["dataset"] = {k: v for k, v in doc["spec"]["dataset"].items() if v is not None}
    run = kubeslim("run", str(write(tmp_path / "shards.yaml", doc)))
    assert run.returncode == 0, run.stderr[-3000:]
    prune = json.loads(next((tmp_path / "artifacts").rglob("prune/**/result.json")).read_text())
    assert prune["metrics"]["accuracyAfter"] >= 0.9
    bench = json.loads(next((tmp_path / "artifacts").rglob("benchmark/**/result.json")).read_text())
    accuracy = {r["model"]: r["accuracy"] for r in bench["details"]["models"]}
    assert accuracy["pruned"] >= 0.9 and accuracy["pruned-int8"] >= 0.9  # original: untrained
