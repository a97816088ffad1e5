# syntax=docker/dockerfile:1
# The operator image: kopf handlers and the Kubernetes client, no ML libraries.
# Build from the repository root (docs/images.md; tests/images/build.py builds all three):
#   docker build -f images/operator.Dockerfile -t ghcr.io/kubeslim/operator:0.1.0 .
# Base images are pinned to exact tags; pin digests too (FROM image:tag@sha256:...)
# when building for production, since a tag can be re-pushed. Any Debian bookworm image
# with python3 and python3-venv works as PYTHON_IMAGE (the tests build one with mmdebstrap).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: the dependencies in a venv, then the kubeslim wheel
FROM ${PYTHON_IMAGE} AS builder
# pip trusts the system CA store, so a build behind a TLS-inspecting proxy works by
# mounting the proxy's bundle over it (-v /etc/ssl/certs/ca-certificates.crt:...:ro).
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# The extras of kubeslim this image installs.
ARG EXTRAS=operator
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, pinned by pyproject.toml and in a layer keyed by it alone: a change
# to kubeslim's sources reuses this layer from the cache instead of reinstalling.
COPY pyproject.toml images/requirements.py ./
RUN python requirements.py pyproject.toml "${EXTRAS}" > requirements.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install -r requirements.txt
# Then the wheel, the only part of the builder that a source change rebuilds (no .pyc
# written into the venv, so that the final stage's copy of it stays cached).
COPY README.md ./
COPY operator ./operator
RUN PYTHONDONTWRITEBYTECODE=1 /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels .

# ---- final: the venv on a clean slim image, running as a non-root user
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kubeslim-operator" \
      org.opencontainers.image.description="kubeslim operator (kopf)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 kubeslim \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin kubeslim
COPY --from=builder /opt/venv /opt/venv
# kubeslim last, without dependencies (they are in the venv above): a source change
# rebuilds only this small layer, and the venv's layer is reused unchanged.
COPY --from=builder /wheels /tmp/wheels
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-index /tmp/wheels/kubeslim-*.whl \
    && rm -rf /tmp/wheels
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Numeric so that the kubelet can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["kubeslim"]
CMD ["operator", "--all-namespaces"]
