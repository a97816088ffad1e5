#!/usr/bin/env bash
# The environment for benchmarks/nncf_legacy.py: NNCF 2.19.0, the last NNCF with
# filter pruning. It pins numpy<2.3, networkx<3.5 and pydot<=3.0.4, which clash
# with the project's .venv, so it gets its own venv. torch 2.14.1 and
# torchvision 0.29.1 (and kubeslim, for the same model and data code) are
# reused from the project's .venv through a .pth file appended *after* the new
# venv's own site-packages: NNCF's pins win, and no second 3 GB torch download.
#
#   benchmarks/nncf_legacy_env.sh [VENV]     # default /work/nncf219-venv
#
# Run NNCF 2.19 on torch 2.14 with NNCF_TORCH_LEGACY_TRACING=1 (nncf_legacy.py
# sets it itself).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${1:-/work/nncf219-venv}
MAIN_SITE=$("$ROOT/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
BASE_PY=$("$ROOT/.venv/bin/python" -c 'import sys; print(sys._base_executable)')
[ -x "$VENV/bin/python" ] || "$BASE_PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet "nncf==2.19.0" "numpy<2.3" "networkx<3.5" "pydot<=3.0.4"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n%s\n' "$ROOT/operator" "$MAIN_SITE" > "$SITE/zz_kubeslim_main_venv.pth"
NNCF_TORCH_LEGACY_TRACING=1 "$VENV/bin/python" -c '
import nncf, numpy, torch, torchvision
from nncf.torch import create_compressed_model
print("nncf", nncf.__version__, "numpy", numpy.__version__, "torch", torch.__version__,
      "torchvision", torchvision.__version__)'
