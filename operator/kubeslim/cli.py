"""The `kubeslim` command: run, stage, train, validate, crd, operator.

Heavy libraries (torch, openvino, kopf) are imported inside each command, so
`kubeslim crd` and the operator image never load torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kubeslim.errors import KubeslimError

STAGE_NAMES = ("prune", "convert", "quantize", "benchmark", "select")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KubeslimError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code  # 2 only for bad input; a Job retries the others
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubeslim",
        description="Prune, convert and quantize a PyTorch CNN into a small, fast OpenVINO model.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole pipeline locally")
    run.add_argument("manifest", help="a ModelOptimization manifest (the YAML you would apply)")
    run.add_argument("--artifacts", help="artifacts URI, overriding spec.artifacts.uri")
    run.add_argument("--force", action="store_true", help="re-run every stage, ignoring cache")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=_cmd_run)

    stage = sub.add_parser("stage", help="run one stage (what a Job runs)")
    stage.add_argument("name", choices=STAGE_NAMES)
    src = stage.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="a ModelOptimization manifest file")
    src.add_argument("--spec-json", help="the spec as JSON (the operator passes this)")
    stage.add_argument("--artifacts", help="artifacts URI, overriding spec.artifacts.uri")
    stage.add_argument(
        "--result-file",
        help="also write a compact JSON result here (a Job's /dev/termination-log)",
    )
    stage.add_argument(
        "--progress",
        choices=("bar", "log", "none"),
        default="bar",
        help="bar: progress bars; log: one KUBESLIM_PROGRESS JSON line per update",
    )
    stage.add_argument("--force", action="store_true", help="ignore a cached result")
    stage.add_argument(
        "--candidate", help="run this search candidate's stage (e.g. t5000, a target of 0.5)"
    )
    stage.set_defaults(func=_cmd_stage)

    clean = sub.add_parser(
        "clean", help="delete every artifact below a URI (what the cleanup Job runs)"
    )
    clean.add_argument("--artifacts", required=True, help="the resource's artifacts root")
    clean.set_defaults(func=_cmd_clean)

    report = sub.add_parser("report", help="write (or open) the HTML report of a search")
    report.add_argument("manifest", help="the ModelOptimization manifest that ran")
    report.add_argument("--artifacts", help="artifacts URI, overriding spec.artifacts.uri")
    report.add_argument("--output", default="kubeslim-report.html", help="where to write it")
    report.add_argument("--open", action="store_true", help="open it in a web browser")
    report.set_defaults(func=_cmd_report)

    train = sub.add_parser(
        "train", help="train the spec's model from scratch on its dataset (baselines, demos)"
    )
    train.add_argument("manifest")
    train.add_argument("--epochs", type=int, default=2)
    train.add_argument("--lr", type=float, default=0.05)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--output", help="checkpoint path (default: spec.model.checkpoint)")
    train.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    train.add_argument("--if-missing", action="store_true", help="do nothing if it exists")
    train.set_defaults(func=_cmd_train)

    validate = sub.add_parser("validate", help="validate a manifest and print the full spec")
    validate.add_argument("manifest")
    validate.set_defaults(func=_cmd_validate)

    crd = sub.add_parser("crd", help="print the CustomResourceDefinition")
    crd.set_defaults(func=_cmd_crd)

    op = sub.add_parser("operator", help="run the Kubernetes operator")
    op.add_argument("--namespace", action="append", help="namespace to watch (repeatable)")
    op.add_argument("--all-namespaces", action="store_true", help="watch every namespace")
    op.add_argument("--max-concurrent", type=int, help="optimizations running at once")
    op.add_argument("--trainer-image", help="image of the stages that need torch (prune, convert)")
    op.add_argument(
        "--runtime-image", help="image of the other stages (quantize, benchmark; no torch)"
    )
    op.add_argument("--peering", help="kopf peering name (leader election between replicas)")
    op.add_argument("--health-port", type=int, help="port of /healthz")
    op.add_argument("--verbose", action="store_true")
    op.set_defaults(func=_cmd_operator)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from kubeslim.executors.local import run_pipeline

    return run_pipeline(args.manifest, artifacts=args.artifacts, force=args.force, quiet=args.quiet)


def _cmd_stage(args: argparse.Namespace) -> int:
    from kubeslim.stages.runner import run_stage_command

    return run_stage_command(
        args.name,
        manifest=args.manifest,
        spec_json=args.spec_json,
        artifacts=args.artifacts,
        result_file=args.result_file,
        progress=args.progress,
        force=args.force,
        candidate=args.candidate,
    )


def _cmd_clean(args: argparse.Namespace) -> int:
    from kubeslim.store import open_store
    from kubeslim.store.shared import delete_tree

    store = open_store(args.artifacts)
    print(f"deleted {delete_tree(store)} artifacts below {store.root}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from kubeslim.executors.search import report_command

    return report_command(args.manifest, args.artifacts, args.output, args.open)


def _cmd_train(args: argparse.Namespace) -> int:
    from kubeslim.stages.train import train_command

    return train_command(args)


def _cmd_validate(args: argparse.Namespace) -> int:
    import yaml

    from kubeslim.api.manifest import load_manifest

    manifest = load_manifest(args.manifest)
    print(yaml.safe_dump(manifest.model_dump(mode="json", exclude_none=True), sort_keys=False))
    return 0


def _cmd_crd(args: argparse.Namespace) -> int:
    from kubeslim.api.crd import render_crd

    sys.stdout.write(render_crd())
    return 0


def _cmd_operator(args: argparse.Namespace) -> int:
    from kubeslim.config import OperatorConfig
    from kubeslim.handlers.main import run_operator

    namespaces = tuple(args.namespace) if args.namespace else None
    config = OperatorConfig.from_env(
        namespaces=() if args.all_namespaces else namespaces,
        max_concurrent=args.max_concurrent,
        trainer_image=args.trainer_image,
        runtime_image=args.runtime_image,
        peering=args.peering,
        health_port=args.health_port,
    )
    return run_operator(config, verbose=args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
