# topomirror: the two commands (`make demo`, `make test`) set everything up on a fresh
# Debian machine, as root: Debian packages the lab needs, the virtual environment, the package.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# gcc and libssl-dev build the native per-packet loop (src/topomirror/dataplane/_fastpath.c).
DEB_PACKAGES := iperf3 nftables iproute2 iputils-ping graphviz procps curl tshark chromium gcc libssl-dev
DEB_COMMANDS := iperf3 nft ip ping dot sysctl curl tshark chromium gcc
DEB_FILES := /usr/include/openssl/evp.h
STAMP := $(VENV)/.installed

.PHONY: setup debs demo test lint clean

setup: debs $(STAMP)

debs:
	@missing=""; for c in $(DEB_COMMANDS); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	for f in $(DEB_FILES); do test -e $$f || missing="$$missing $$f"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages (missing:$$missing)"; \
	  if [ "$$(id -u)" != 0 ]; then echo "error: run as root to install $(DEB_PACKAGES)"; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_PACKAGES) >/dev/null; \
	fi

$(STAMP): pyproject.toml setup.py src/topomirror/dataplane/_fastpath.c | debs
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(BIN)/topomirror demo

test: setup
	$(BIN)/python -m pytest -q tests

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
	find src -name '_fastpath*.so' -delete
