"""Build the project's three images with podman, cached by a content hash of their inputs.

No container registry is reachable from the test machines, so the base image is made
here: a Debian bookworm minbase with Python (mmdebstrap from the mirror apt already uses),
imported into podman and passed to each Dockerfile through its base-image build arg.
Each image's build context is staged from exactly the files its Dockerfile copies
(pyproject.toml, README.md, operator/ without caches), and its tag is a hash of that
context, the Dockerfile, the build args and the base image: a warm run finds every tag
and rebuilds nothing. Each image is also saved as a docker-archive tarball that a
Kubernetes node imports with `ctr -n k8s.io images import ARCHIVE`.

A changed input rebuilds with podman's layer cache: the Dockerfiles install the
dependencies in a layer keyed by pyproject.toml alone and kubeslim in a small last layer,
so a source change reuses the dependencies (torch and CUDA for the trainer). The builder
stage is tagged (localhost/kubeslim/builder:KIND-DIGEST) so that pruning dangling images
keeps its layers, and an image's previous build is removed only after the new one is
tagged, so the final stage's layers it shares stay cached.

    python -m tests.images.build [operator runtime trainer trainer-cu12]   # prints JSON
    python -m tests.images.build standin   # the cluster tests' stand-in stage image
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("KUBESLIM_IMAGE_CACHE", Path.home() / ".cache/kubeslim/images"))
# One lock for every builder on the machine, wherever its archives go: they share podman.
LOCK = Path.home() / ".cache/kubeslim/images/build.lock"
# The images' and builder stages' repository (a test builds a changed copy under another
# one, sharing podman's layer cache); the base image keeps its own.
REPOSITORY = os.environ.get("KUBESLIM_IMAGE_REPOSITORY", "localhost/kubeslim")
BASE_REPOSITORY = "localhost/kubeslim"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# podman's default rlimits are above the hard limits that root may set on these VMs.
# crun refuses this kernel's hybrid cgroup layout ("cgroups in hybrid mode not supported").
PODMAN = ["podman", "--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=16384:16384", "--ulimit", "nproc=8192:8192"]
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")


@dataclass(frozen=True)
class Flavour:
    """One image to build: a Dockerfile plus build args."""

    dockerfile: str
    base_arg: str
    build_args: tuple[tuple[str, str], ...] = ()


FLAVOURS: dict[str, Flavour] = {
    "operator": Flavour("operator", "PYTHON_IMAGE"),
    "runtime": Flavour("runtime", "PYTHON_IMAGE"),
    "trainer": Flavour("trainer", "PYTHON_IMAGE"),
    # torch's CUDA 12 wheels for drivers older than CUDA 13 (download.pytorch.org only).
    "trainer-cu12": Flavour(
        "trainer",
        "PYTHON_IMAGE",
        (
            ("TORCH_INDEX", "https://download.pytorch.org/whl/cu126"),
            ("CUDA_REQUIREMENT", "cuda>=12.6"),
        ),
    ),
}
DEFAULT_KINDS = ("operator", "runtime", "trainer")
DIGEST_CHARS = 16  # of the inputs' sha256 in a tag: localhost/kubeslim/NAME:DIGEST[-FLAVOUR]
# Free space a cold build needs, from the peaks measured here (docs/images.md): podman's
# storage holds the builder's venv, the final stage's copy and the committed layer.
BUILD_DISK_GB = {"operator": 3, "runtime": 8, "trainer": 35}
# ... and a build whose dependencies are cached (only kubeslim's layer and the archive).
REBUILD_DISK_GB = {"operator": 1, "runtime": 2, "trainer": 7}
# What the dependency layer reads, besides the Dockerfile, its build args and the base.
DEPENDENCY_FILES = (Path("pyproject.toml"), Path("images/requirements.py"))


class BuildError(RuntimeError):
    """A build that cannot start or failed, in one line."""


@dataclass(frozen=True)
class BuiltImage:
    """What a node needs to import and run an image."""

    kind: str
    tag: str
    archive: Path
    size_bytes: int
    archive_bytes: int
    built: bool  # False when the cache already had it
    seconds: float


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, **kw)  # type: ignore[call-overload]


def debian_mirror() -> str:
    """The Debian mirror apt on this machine uses (deb822 or one-line sources)."""
    for path in sorted(Path("/etc/apt").glob("sources.list.d/*.sources")):
        m = re.search(r"^URIs:\s*(\S+/debian)\s*$", path.read_text(), re.M)
        if m:
            return m.group(1)
    one_line = Path("/etc/apt/sources.list")
    text = one_line.read_text() if one_line.exists() else ""
    m = re.search(r"^deb\s+(\S+/debian)\s", text, re.M)
    return m.group(1) if m else "http://deb.debian.org/debian"


def image_id(ref: str) -> str | None:
    proc = subprocess.run(
        [*PODMAN, "image", "inspect", "--format", "{{.Id}}", ref],
        capture_output=True,
        text=True,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


_lock_depth = 0


@contextmanager
def build_lock() -> Iterator[None]:
    """One builder at a time across processes (test sessions, `make images`): two would
    build the same image twice and remove each other's older builds."""
    global _lock_depth
    if _lock_depth:
        yield
        return
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1


def base_image() -> str:
    """The Debian base, made with mmdebstrap once and kept in podman and as a tarball."""
    with build_lock():
        return _base_image()


def _base_image() -> str:
    key = hashlib.sha256(f"{BASE_SUITE} {sorted(BASE_PACKAGES)}".encode()).hexdigest()[:12]
    tag = f"{BASE_REPOSITORY}/debian-base:{BASE_SUITE}-{key}"
    if image_id(tag):
        return tag
    tarball = CACHE / f"debian-base-{BASE_SUITE}-{key}.tar"
    if not tarball.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial.tar")
        run(
            [
                "mmdebstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                BASE_SUITE,
                str(partial),
                debian_mirror(),
            ],
            stdout=subprocess.DEVNULL,
        )
        partial.rename(tarball)
    run([*PODMAN, "import", str(tarball), tag], stdout=subprocess.DEVNULL)
    return tag


def _context_files() -> list[Path]:
    """The files the Dockerfiles copy, relative to the repository root."""
    files = [*DEPENDENCY_FILES, Path("README.md")]
    for path in sorted((ROOT / "operator").rglob("*")):
        rel = path.relative_to(ROOT)
        if path.is_file() and not _ignored(rel):
            files.append(rel)
    return files


def _ignored(rel: Path) -> bool:
    return any(p == "__pycache__" or p.endswith(".egg-info") for p in rel.parts) or (
        rel.suffix == ".pyc"
    )


def stage_context(dest: Path) -> None:
    for rel in _context_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)


def inputs_digest(kind: str, base: str) -> str:
    """Hash of everything a build reads: Dockerfile, build args, base image, context."""
    flavour = FLAVOURS[kind]
    h = hashlib.sha256()
    h.update((ROOT / "images" / f"{flavour.dockerfile}.Dockerfile").read_bytes())
    h.update(json.dumps([flavour.base_arg, base, image_id(base), flavour.build_args]).encode())
    for rel in _context_files():
        h.update(str(rel).encode() + b"\0" + (ROOT / rel).read_bytes() + b"\0")
    return h.hexdigest()


def builder_ref(kind: str, base: str) -> str:
    """The tag of the builder stage for the current dependency inputs: while it exists,
    the dependency layer is in podman's cache (any Dockerfile change counts as a miss)."""
    flavour = FLAVOURS[kind]
    h = hashlib.sha256()
    h.update((ROOT / "images" / f"{flavour.dockerfile}.Dockerfile").read_bytes())
    h.update(json.dumps([base, image_id(base), flavour.build_args]).encode())
    for rel in DEPENDENCY_FILES:
        h.update((ROOT / rel).read_bytes())
    return f"{REPOSITORY}/builder:{kind}-{h.hexdigest()[:DIGEST_CHARS]}"


def image_ref(kind: str) -> str:
    """The tag the image of `kind` has for the current inputs (builds the base if needed)."""
    digest = inputs_digest(kind, base_image())[:DIGEST_CHARS]
    name, _, flavour = kind.partition("-")
    return f"{REPOSITORY}/{name}:{digest}{'-' + flavour if flavour else ''}"


def archive_path(ref: str) -> Path:
    """Where the docker-archive of an image ref is saved."""
    name, tag = ref.rsplit("/", 1)[-1].split(":")
    return CACHE / f"{name}-{tag}.tar"


def build(kind: str) -> BuiltImage:
    """Build (or find) the image of `kind` and its docker-archive."""
    with build_lock():
        return _build(kind)


def _build(kind: str) -> BuiltImage:
    flavour = FLAVOURS[kind]
    base = base_image()
    ref = image_ref(kind)
    archive = archive_path(ref)
    started = time.monotonic()
    built = False
    if not image_id(ref):
        drop_stale_archives(ref)
        if archive.exists():
            run([*PODMAN, "load", "-i", str(archive)], stdout=subprocess.DEVNULL)
        else:
            builder = builder_ref(kind, base)
            check_disk(kind, cached=image_id(builder) is not None)
            _podman_build(flavour, base, ref, builder)
            built = True
        # Only now: until the new image is tagged, the old one keeps the layers it shares.
        drop_stale_images(ref)
        drop_stale_builders(kind, builder_ref(kind, base))
    return _saved(kind, ref, archive, built, started)


def _tags(repo: str) -> list[str]:
    listed = run(
        [*PODMAN, "images", "--format", "{{.Repository}}:{{.Tag}}", repo], capture_output=True
    )
    return listed.stdout.split()


def _remove(refs: list[str]) -> None:
    if refs:  # an image a running container uses stays; the next build retries
        subprocess.run([*PODMAN, "rmi", *refs], capture_output=True)


def drop_stale_images(ref: str) -> None:
    """Remove earlier builds of the same image and flavour (other input hashes) from
    podman: each trainer build is 5.7 GB. podman removes their untagged parent layers
    too, except those the new build shares (the base, the dependencies' copy)."""
    repo, _, tag = ref.rpartition(":")
    suffix = tag[DIGEST_CHARS:]
    _remove([r for r in _tags(repo) if r != ref and r.rpartition(":")[2][DIGEST_CHARS:] == suffix])


def drop_stale_builders(kind: str, current: str) -> None:
    """Remove the builder stages of `kind` for earlier dependency inputs: the trainer's
    holds its 5.7 GB venv, and it is of no use once pyproject.toml or the Dockerfile moved."""
    repo, _, tag = current.rpartition(":")
    prefix = tag[: -DIGEST_CHARS - 1]
    _remove(
        [
            r
            for r in _tags(repo)
            if r != current and r.rpartition(":")[2][: -DIGEST_CHARS - 1] == prefix
        ]
    )


def drop_stale_archives(ref: str) -> None:
    """Remove the archives of earlier builds of the same image and flavour (5.7 GB for
    the trainer): before a build, as no build reads them."""
    repo, _, tag = ref.rpartition(":")
    name, suffix = repo.rsplit("/", 1)[1], tag[DIGEST_CHARS:]
    for path in CACHE.glob(f"{name}-*.tar"):
        other = path.stem[len(name) + 1 :]
        if other != tag and other[DIGEST_CHARS:] == suffix and len(other) >= DIGEST_CHARS:
            path.unlink()


def check_disk(kind: str, cached: bool) -> None:
    """Fail in one line before a build that would fill the disk (the trainer's venv exists
    up to four times at the peak of a cold build, then once more as the archive; with
    its dependencies `cached`, a build adds kubeslim's layer and the archive)."""
    needs = REBUILD_DISK_GB if cached else BUILD_DISK_GB
    need = needs[FLAVOURS[kind].dockerfile] * 10**9
    store = run([*PODMAN, "info", "--format", "{{.Store.GraphRoot}}"], capture_output=True)
    for path in (Path(store.stdout.strip()), CACHE):
        path.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(path).free
        if free < need:
            raise BuildError(
                f"building the {kind} image needs about {need / 1e9:.0f} GB free on the disk "
                f"of {path}; {free / 1e9:.1f} GB are free"
            )


def remove_leftovers() -> None:
    """Working containers of builds that were killed (a timeout, Ctrl-C): each holds a
    builder's venv, gigabytes for the trainer. Called under the build lock, so none of
    them belongs to a running build of ours."""
    if not shutil.which("buildah"):
        return
    listed = run(["buildah", "containers", "--json"], capture_output=True).stdout
    ours = [
        c["id"] for c in json.loads(listed or "null") or [] if c["imagename"].startswith(REPOSITORY)
    ]
    if ours:
        subprocess.run(["buildah", "rm", *ours], capture_output=True)


def _podman_build(flavour: Flavour, base: str, ref: str, builder: str) -> None:
    """Build the builder stage and tag it (so that its layers are not dangling and stay
    cached), then the image, which finds the builder's layers in the cache."""
    remove_leftovers()
    args = [f"{flavour.base_arg}={base}", *(f"{k}={v}" for k, v in flavour.build_args)]
    with tempfile.TemporaryDirectory(prefix="kubeslim-image-") as tmp:
        context = Path(tmp)
        stage_context(context)
        cmd = [
            *PODMAN, "build", *ULIMITS,
            # Package downloads go through this machine's TLS setup: its CA bundle
            # replaces the image's, and pip trusts the system store (the builder's PIP_CERT).
            "--network", "host",
            "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro",
            "--layers=true", "--force-rm",
            "-f", str(ROOT / "images" / f"{flavour.dockerfile}.Dockerfile"),
        ]  # fmt: skip
        for arg in args:
            cmd += ["--build-arg", arg]
        for tags in (["--target", "builder", "-t", builder], ["-t", ref]):
            try:
                run([*cmd, *tags, str(context)])
            except subprocess.CalledProcessError as err:
                raise BuildError(
                    f"podman build of {tags[-1]} failed with exit code {err.returncode}"
                ) from None
    # The layers of earlier builder stages, untagged now: gigabytes for the trainer.
    subprocess.run([*PODMAN, "image", "prune", "-f"], capture_output=True)


def image_size(ref: str) -> int:
    out = run(
        [*PODMAN, "image", "inspect", "--format", "{{.Size}}", ref], capture_output=True
    ).stdout
    return int(out.strip())


STANDIN_DOCKERFILE = Path("tests/images/standin.Dockerfile")
STANDIN_FILES = (Path("tests/cluster/standin.py"),)


def standin_ref(runtime_ref: str) -> str:
    """The stand-in image's tag: a hash of its Dockerfile, the runtime image under it and
    the stand-in script."""
    h = hashlib.sha256()
    for rel in (STANDIN_DOCKERFILE, *STANDIN_FILES):
        h.update(str(rel).encode() + b"\0" + (ROOT / rel).read_bytes() + b"\0")
    h.update(json.dumps([runtime_ref, image_id(runtime_ref)]).encode())
    return f"{REPOSITORY}/standin:{h.hexdigest()[:DIGEST_CHARS]}"


def standin_image() -> BuiltImage:
    """The cluster tests' stand-in stage (tests/cluster/standin.py as `kubeslim-standin`)
    as one thin layer on the runtime image, which is built first if the cache lacks it."""
    with build_lock():
        runtime = _build("runtime")
        ref = standin_ref(runtime.tag)
        archive = archive_path(ref)
        started = time.monotonic()
        built = not image_id(ref)
        if built:
            drop_stale_archives(ref)
            with tempfile.TemporaryDirectory(prefix="kubeslim-standin-") as tmp:
                context = Path(tmp)
                for rel in STANDIN_FILES:
                    (context / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / rel, context / rel)
                run([*PODMAN, "build", *ULIMITS, "--layers=true", "--force-rm",
                     "-f", str(ROOT / STANDIN_DOCKERFILE),
                     "--build-arg", f"RUNTIME_IMAGE={runtime.tag}", "-t", ref, str(context)],
                    stdout=subprocess.DEVNULL)  # fmt: skip
            drop_stale_images(ref)
        return _saved("standin", ref, archive, built, started)


def _saved(kind: str, ref: str, archive: Path, built: bool, started: float) -> BuiltImage:
    """Write the docker-archive a node imports (once per image) and describe the image."""
    if not archive.exists():
        partial = archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        run([*PODMAN, "save", "--format", "docker-archive", "-o", str(partial), ref])
        partial.rename(archive)
    return BuiltImage(
        kind=kind,
        tag=ref,
        archive=archive,
        size_bytes=image_size(ref),
        archive_bytes=archive.stat().st_size,
        built=built,
        seconds=round(time.monotonic() - started, 1),
    )


def images(kinds: tuple[str, ...] = DEFAULT_KINDS) -> dict[str, BuiltImage]:
    """The built images by kind, building what the cache lacks. The node's setup imports
    `images()[kind].archive` and runs `images()[kind].tag`."""
    return {kind: build(kind) for kind in kinds}


def main(argv: list[str]) -> int:
    kinds = tuple(argv) or DEFAULT_KINDS
    if kinds == ("standin",):
        try:
            print(json.dumps(asdict(standin_image()), indent=2, default=str))
        except BuildError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    unknown = [k for k in kinds if k not in FLAVOURS]
    if unknown:
        print(f"unknown image {unknown[0]!r}: expected one of {', '.join(FLAVOURS)}")
        return 2
    try:
        built = images(kinds)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({k: asdict(v) for k, v in built.items()}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
