"""The real node's parts that need no root: image archives, the disk check,
the host-state record."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from tests.cluster import hoststate
from tests.cluster.node_images import ImageError, check_disk, pause_archive


def test_pause_archive_is_a_docker_archive_tagged_by_the_binary(tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF not really")
    tag, archive = pause_archive(binary, tmp_path / "cache")

    with tarfile.open(archive) as tar:
        (manifest,) = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(tar.extractfile(manifest["Config"]))  # type: ignore[arg-type]
        (layer_name,) = manifest["Layers"]
        with tarfile.open(fileobj=tar.extractfile(layer_name)) as layer:
            member = layer.getmember("pause")
    assert manifest["RepoTags"] == [tag] and tag.startswith("localhost/kubeslim/pause:")
    assert config["config"]["Entrypoint"] == ["/pause"]
    assert config["rootfs"]["diff_ids"] == [f"sha256:{layer_name.removesuffix('.tar')}"]
    assert member.mode == 0o755 and member.size == binary.stat().st_size
    # The same binary gives the same image; a new one a new tag.
    assert pause_archive(binary, tmp_path / "cache") == (tag, archive)
    binary.write_bytes(b"\x7fELF rebuilt")
    assert pause_archive(binary, tmp_path / "cache")[0] != tag


def test_import_is_refused_when_the_disk_would_be_left_nearly_full(tmp_path: Path) -> None:
    huge = tmp_path / "huge.tar"
    with huge.open("wb") as f:
        f.truncate(1 << 42)  # sparse: 4 TiB on paper, no blocks used
    with pytest.raises(ImageError, match=r"huge\.tar needs about .* GiB free .* GiB left"):
        check_disk(tmp_path / "store", huge)
    small = tmp_path / "small.tar"
    small.write_bytes(b"x")
    check_disk(tmp_path / "store", small)


def test_record_round_trips_and_notes_what_did_not_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hoststate, "RECORD_DIR", tmp_path / "run")
    record = hoststate.HostRecord.before_start(tmp_path / "state", "br0", tmp_path / "sock")
    record.pids.append(42)
    record.save()

    loaded = hoststate.HostRecord.load()
    assert loaded == record
    assert set(loaded.sysctls) <= set(hoststate.SYSCTLS)
    assert all(not Path(d).exists() for d in loaded.created_dirs)
    hoststate.HostRecord.forget()
    assert hoststate.HostRecord.load() is None


def test_mounts_under_lists_deepest_first() -> None:
    points = hoststate.mounts_under(Path("/"))
    assert points, "no mounts at all?"
    depths = [p.count("/") for p in points]
    assert depths == sorted(depths, reverse=True)
