#!/usr/bin/env bash
# The full-budget quality benchmark on a CUDA machine (prepared, not run in the
# CPU-only session that wrote it): baselines of 15 epochs on all 60k
# Fashion-MNIST images, 9 fine-tuning epochs per pruning configuration, for the
# compact CNN, resnet18 and mobilenet_v2 (CIFAR-style stems). kubeslim train and
# the prune stage pick CUDA by themselves (device auto); convert, quantize and
# the OpenVINO timing stay on the CPU, as in production.
#
#   benchmarks/gpu_quality.sh            # writes benchmarks/results/quality_fashion_mnist_gpu.json
#
# Needs: the repo's .venv (pip install -e .) with a CUDA build of torch, and the
# Debian package dataset-fashion-mnist (or KUBESLIM_FASHION_MNIST_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device visible")'
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
exec "$PY" -m benchmarks.quality_fashion_mnist --budget gpu \
  --models compact resnet18 mobilenet_v2 --output quality_fashion_mnist_gpu "$@"
