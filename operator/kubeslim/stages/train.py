"""`kubeslim train`: a baseline from scratch, for demos and benchmarks.

kubeslim optimizes trained models; this exists so the quickstart and the
benchmarks can produce their baseline here, from bundled data, instead of
downloading one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from kubeslim.api.manifest import load_manifest
from kubeslim.data.datasets import Preprocess, load_splits, loader
from kubeslim.errors import SpecError
from kubeslim.models.training import evaluate, pick_device, train_epoch
from kubeslim.models.zoo import build_model
from kubeslim.progress import Reporter


def train_command(args: argparse.Namespace) -> int:
    """Train the manifest's model and save its state_dict."""
    spec = load_manifest(args.manifest).spec
    output = args.output or spec.model.checkpoint
    if not output or "://" in output.removeprefix("file://"):
        raise SpecError("--output", "expected a local path (or a local spec.model.checkpoint)")
    path = Path(output.removeprefix("file://"))
    if args.if_missing and path.exists():
        print(f"{path} exists; not training", file=sys.stderr)
        return 0
    torch.manual_seed(spec.dataset.seed)
    device = pick_device(args.device)
    model = build_model(spec.model).to(device)
    _, h, w = spec.model.input_shape
    splits = load_splits(spec.dataset, size=(h, w))
    preprocess = Preprocess(spec.dataset, spec.model)
    train = loader(splits.train, args.batch_size, shuffle=True, seed=spec.dataset.seed)
    opt = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=max(1, args.epochs * len(train))
    )
    reporter = Reporter("bar", stream=sys.stderr, interval=5.0)
    started = time.monotonic()
    for epoch in range(1, args.epochs + 1):
        reporter.phase("train", epoch=epoch, epochs=args.epochs)
        train_epoch(model, train, preprocess, opt, device, reporter, after_step=sched.step)
    acc = evaluate(model, loader(splits.test, 256), preprocess, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        torch.save(model.cpu().state_dict(), f)
    Path(f.name).replace(path)
    seconds = time.monotonic() - started
    print(f"trained {path}: test accuracy {acc:.4f} in {seconds:.0f}s", file=sys.stderr)
    return 0
