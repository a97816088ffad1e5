# syntax=docker/dockerfile:1
# The CPU runtime image: runs the convert, quantize and benchmark stages
# (torch for loading the pruned model, ONNX, OpenVINO, NNCF), with s3fs for s3:// artifacts.
# Build from the repository root:
#   docker build -f images/runtime.Dockerfile -t ghcr.io/kubeslim/runtime:0.1.0 .
# Base images are pinned to exact tags; pin digests too (FROM image:tag@sha256:...)
# when building for production, since a tag can be re-pushed.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
# CPU-only torch wheels: the default PyPI wheel bundles ~3 GB of CUDA libraries
# that a CPU image never loads.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

# ---- builder: CPU torch first, then kubeslim with its extras (pins from pyproject.toml)
FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_INDEX
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
# torch==2.14.1+cpu satisfies the extra's torch==2.14.1 pin (local labels are ignored),
# so the second install keeps the CPU build.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --index-url "${TORCH_INDEX}" torch==2.14.1 torchvision==0.29.1 \
    && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install "$(ls /wheels/kubeslim-*.whl)[runtime,s3]"

# ---- final: the venv on a clean slim image, running as a non-root user
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kubeslim-runtime" \
      org.opencontainers.image.description="kubeslim convert, quantize and benchmark stages (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 kubeslim \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/kubeslim \
       --shell /usr/sbin/nologin kubeslim
COPY --from=builder /opt/venv /opt/venv
# HOME is writable for caches (torch, OpenVINO); stages write artifacts to the spec's URI.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/kubeslim
WORKDIR /home/kubeslim
# Numeric so that the kubelet can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
ENTRYPOINT ["kubeslim"]
CMD ["--help"]
