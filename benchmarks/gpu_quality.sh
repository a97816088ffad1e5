#!/usr/bin/env bash
# The full-budget quality benchmarks on a CUDA machine (prepared, not run in the
# CPU-only sessions that wrote it). One run covers:
#  1. benchmarks/pruning_ablation.py at --budget gpu (baselines of 15 epochs on
#     all Fashion-MNIST training images, 9 fine-tuning epochs, 3 seeds) for the
#     compact CNN, resnet18 and mobilenet_v2 (CIFAR-style stems): kubeslim FPGM
#     vs torch-pruning's, soft vs hard masks, uniform vs global, distillation;
#  2. NNCF 2.19's filter pruning at the same budget, with and without
#     distillation (its own venv, benchmarks/nncf_legacy_env.sh);
#  3. the whole pipeline (prune -> INT8 -> benchmark) per configuration:
#     benchmarks/quality_fashion_mnist.py --budget gpu.
# Pruning and training pick CUDA by themselves; convert, quantize and the
# OpenVINO timing stay on the CPU, as in production.
#
#   benchmarks/gpu_quality.sh        # writes benchmarks/results/*_gpu*.json
#
# Needs: the repo's .venv (pip install -e .) with a CUDA build of torch, and the
# Debian package dataset-fashion-mnist (or KUBESLIM_FASHION_MNIST_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NNCF_VENV=${NNCF_VENV:-/work/nncf219-venv}
SEEDS=${SEEDS:-"0 1 2"}
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device visible")'
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
[ -x "$NNCF_VENV/bin/python" ] || benchmarks/nncf_legacy_env.sh "$NNCF_VENV"
for model in compact resnet18 mobilenet_v2; do
  # The baseline first (the NNCF runs start from it), then both sides.
  "$PY" -m benchmarks.pruning_ablation --budget gpu --model "$model" --seeds $SEEDS \
    --configs fpgm --output "pruning_ablation_gpu_$model"
  for seed in $SEEDS; do
    "$NNCF_VENV/bin/python" -m benchmarks.nncf_legacy train --ablation gpu --model "$model" --seed "$seed"
    "$NNCF_VENV/bin/python" -m benchmarks.nncf_legacy train --ablation gpu --model "$model" --seed "$seed" --kd
  done
  "$PY" -m benchmarks.pruning_ablation --budget gpu --model "$model" --seeds $SEEDS \
    --output "pruning_ablation_gpu_$model"
done
exec "$PY" -m benchmarks.quality_fashion_mnist --budget gpu \
  --models compact resnet18 mobilenet_v2 --output quality_fashion_mnist_gpu "$@"
