"""Images for the real test node: the sandbox (pause) image, a small test
image, and importing docker-archive tarballs into the node's containerd.

No registry is reachable, so every image the node runs is imported from a
tarball (`ctr -n k8s.io images import`) and Pods use it with
imagePullPolicy IfNotPresent or Never. The node's image store outlives the
node (it is a cache, like the binaries), so a warm start imports nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import subprocess
import tarfile
from pathlib import Path

log = logging.getLogger(__name__)

PAUSE_REPOSITORY = "localhost/kubeslim/pause"
TEST_REPOSITORY = "localhost/kubeslim/test-base"
NAMESPACE = "k8s.io"
# Room to leave on the image store's disk beyond an image itself: containerd
# holds the compressed blobs and the unpacked snapshot at once while
# importing, and the kubelet evicts Pods when the disk runs low.
IMPORT_FACTOR = 2.2
RESERVE_BYTES = 5 * 1024**3


class ImageError(RuntimeError):
    """An image could not be made or imported; the message says why."""


def _add_file(layer: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    layer.addfile(info, io.BytesIO(data))


def write_docker_archive(
    dest: Path, tag: str, layers: list[Path], entrypoint: list[str], user: str = ""
) -> Path:
    """A docker-archive (what `podman save --format docker-archive` writes)
    of uncompressed layer tarballs, bottom first, without podman: `ctr images
    import` reads it."""
    digests = [hashlib.sha256(layer.read_bytes()).hexdigest() for layer in layers]
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": entrypoint,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "User": user,
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in digests]},
    }
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    config_name = f"{hashlib.sha256(config_bytes).hexdigest()}.json"
    names = [f"{d}.tar" for d in digests]
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": names}]
    partial = dest.with_suffix(".partial")
    with tarfile.open(partial, "w") as archive:
        _add_file(archive, config_name, config_bytes, 0o644)
        _add_file(archive, "manifest.json", json.dumps(manifest).encode(), 0o644)
        for layer, name in zip(layers, names, strict=True):
            archive.add(layer, arcname=name)
    partial.replace(dest)
    return dest


def pause_archive(pause_binary: Path, cache: Path) -> tuple[str, Path]:
    """The sandbox image: the static pause program alone. Its tag is the
    binary's hash, so a rebuilt binary is a new image."""
    data = pause_binary.read_bytes()
    tag = f"{PAUSE_REPOSITORY}:{hashlib.sha256(data).hexdigest()[:12]}"
    dest = cache / f"pause-{tag.rsplit(':', 1)[1]}.tar"
    if not dest.exists():
        cache.mkdir(parents=True, exist_ok=True)
        layer = cache / "pause-layer.tar"
        with tarfile.open(layer, "w") as tar:
            _add_file(tar, "pause", data, 0o755)
        write_docker_archive(dest, tag, [layer], ["/pause"], user="65535:65535")
        layer.unlink()
    return tag, dest


# The test image: Debian minbase with Python, made here with mmdebstrap from
# the mirror apt uses (no registry is reachable).
TEST_SUITE = "bookworm"
TEST_PACKAGES = ("python3", "python-is-python3")


def test_base_archive(cache: Path) -> tuple[str, Path]:
    """A small Debian image with Python for tests that prove the node itself,
    independent of the project's image builds (and their build lock): the
    mmdebstrap root filesystem is the image's one layer. Tagged by its
    inputs, made once."""
    from tests.images.build import debian_mirror

    key = hashlib.sha256(f"{TEST_SUITE} {sorted(TEST_PACKAGES)}".encode()).hexdigest()[:12]
    tag = f"{TEST_REPOSITORY}:{TEST_SUITE}-{key}"
    dest = cache / f"test-base-{TEST_SUITE}-{key}.docker.tar"
    if dest.exists():
        return tag, dest
    cache.mkdir(parents=True, exist_ok=True)
    rootfs = cache / f"test-base-{key}.rootfs.tar"
    result = subprocess.run(
        [
            "mmdebstrap",
            "--variant=minbase",
            f"--include={','.join(TEST_PACKAGES)}",
            TEST_SUITE,
            str(rootfs),
            debian_mirror(),
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ImageError(f"mmdebstrap failed: {result.stderr.strip()[-2000:]}")
    try:
        write_docker_archive(dest, tag, [rootfs], ["python"])
    finally:
        rootfs.unlink(missing_ok=True)
    return tag, dest


def check_disk(store: Path, archive: Path) -> None:
    """Refuse an import that would leave the image store's disk nearly full:
    the kubelet would then evict Pods and collect images, the pause image too."""
    store.mkdir(parents=True, exist_ok=True)
    need = int(archive.stat().st_size * IMPORT_FACTOR) + RESERVE_BYTES
    free = shutil.disk_usage(store).free
    if free < need:
        gib = 1024**3
        raise ImageError(
            f"importing {archive.name} needs about {need / gib:.1f} GiB free on the disk of "
            f"{store}, {free / gib:.1f} GiB left: free space or set KUBESLIM_NODE_STORE"
        )


class ImageStore:
    """The node's containerd image store, driven through `ctr`."""

    def __init__(self, ctr: Path, socket: Path, root: Path) -> None:
        self.ctr = ctr
        self.socket = socket
        self.root = root

    def _ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.ctr), "--address", str(self.socket), "--namespace", NAMESPACE, *args],
            capture_output=True,
            text=True,
        )

    def names(self) -> set[str]:
        result = self._ctr("images", "list", "--quiet")
        if result.returncode != 0:
            raise ImageError(f"ctr images list failed: {result.stderr.strip()}")
        return set(result.stdout.split())

    def has(self, tag: str) -> bool:
        return tag in self.names()

    def import_archive(self, archive: Path, tag: str | None = None) -> None:
        """Import a docker-archive or OCI tarball unless `tag` is already there.

        `--local` unpacks in the client, as containerd 1.x did: the
        transfer service of 2.x does not unpack docker-archives for the CRI's
        snapshotter on its own. `--discard-unpacked-layers` lets containerd drop
        the layer blobs once unpacked (Pods need only the snapshots), so an image
        takes its size on disk once, not twice (the trainer: 5.7 GB saved).
        """
        if tag and self.has(tag):
            return
        if tag:
            self.drop_other_builds(tag)
        check_disk(self.root, archive)
        log.info("importing %s into the node's containerd", archive)
        result = self._ctr("images", "import", "--local", "--discard-unpacked-layers", str(archive))
        if result.returncode != 0:
            raise ImageError(f"ctr images import {archive} failed: {result.stderr.strip()}")
        if tag and not self.has(tag):
            raise ImageError(f"{archive} holds no image tagged {tag}")

    def remove_image(self, tag: str) -> None:
        """Untag an image; containerd collects layers no other image uses."""
        self._ctr("images", "remove", "--sync", tag)

    def drop_other_builds(self, tag: str) -> list[str]:
        """Remove the store's other tags of `tag`'s repository before importing it: the
        project's images are tagged by a hash of their inputs, so an older tag is an older
        build that no session runs again, and the store outlives nodes (six trainer builds
        of 5.7 GB once filled 19 GB here). One node runs at a time, so none is in use."""
        repository = tag.rpartition(":")[0]
        stale = [n for n in self.names() if n != tag and n.rpartition(":")[0] == repository]
        for name in stale:
            log.info("removing %s from the node's image store (an older build)", name)
            self.remove_image(name)
        return stale

    def remove_containers(self) -> int:
        """Delete every container and sandbox (not images): what Pods leave in
        the store when a node stops without its kubelet cleaning up."""
        count = 0
        for kind in ("tasks", "containers", "sandboxes"):
            listed = self._ctr(kind, "list", "--quiet")
            ids = listed.stdout.split() if listed.returncode == 0 else []
            for item in ids:
                if kind == "tasks":
                    self._ctr("tasks", "kill", "--signal", "SIGKILL", item)
                    self._ctr("tasks", "delete", "--force", item)
                else:
                    self._ctr(kind, "delete", item)
                    count += 1
        return count
