# syntax=docker/dockerfile:1
# The trainer image: runs the prune stage (torch, torchvision, torch-pruning) on a GPU
# when the node has one, on the CPU otherwise; s3fs for s3:// artifacts.
# Build from the repository root:
#   docker build -f images/trainer.Dockerfile -t ghcr.io/kubeslim/trainer:0.1.0 .
# The CUDA "base" flavour carries only cudart and the NVIDIA container-toolkit
# settings (NVIDIA_VISIBLE_DEVICES, NVIDIA_DRIVER_CAPABILITIES, NVIDIA_REQUIRE_CUDA):
# torch's PyPI wheels bring their own cuDNN/cuBLAS, so the larger "runtime" flavour
# would only add a second copy. CUDA 13 matches torch 2.14.1's PyPI wheels (cu13), so the
# toolkit's NVIDIA_REQUIRE_CUDA refuses nodes whose driver is too old for them.
# Base images are pinned to exact tags; pin digests too (FROM image:tag@sha256:...)
# when building for production.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04

# ---- builder: Ubuntu 24.04's python3.12 with a venv holding kubeslim[train,s3]
FROM ${CUDA_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install "$(ls /wheels/kubeslim-*.whl)[train,s3]"

# ---- final: the same base with only the interpreter, the venv and a non-root user
FROM ${CUDA_IMAGE}
LABEL org.opencontainers.image.title="kubeslim-trainer" \
      org.opencontainers.image.description="kubeslim prune stage (CUDA, torch, torch-pruning)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
# The venv links to /usr/bin/python3, so the final stage needs the same interpreter;
# Ubuntu's archive versions move with security fixes, hence no version pin.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 kubeslim \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/kubeslim \
       --shell /usr/sbin/nologin kubeslim
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/kubeslim
WORKDIR /home/kubeslim
# Numeric so that the kubelet can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
ENTRYPOINT ["kubeslim"]
CMD ["--help"]
