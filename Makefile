# synthpacs: `make run` starts the service on embedded defaults, `make test` passes the whole suite.
# Both set up everything they need: Debian packages for the real DICOM peers (dcmtk, Orthanc and its
# DICOMweb plugin, dicom3tools) and PostgreSQL (the server the PostgreSQL index tests start), a virtual
# environment with the CPU build of PyTorch, and the project.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel; on these machines pip finds it on local disk. Override for a GPU build, e.g.
#   make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" venv
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.synthpacs-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: run test bench bench-gpu fuzz demo demo-viewer viewer deps venv proto clean help

help:
	@echo "make run    start synthpacs on embedded defaults (DICOM :11112, gRPC :50051, /metrics :9108)"
	@echo "make test   install everything and run the whole test suite"
	@echo "make bench  run the benchmarks and rewrite bench/RESULTS.md"
	@echo "make bench-gpu  the prepared GPU run (BENCH_GPU_ARGS='--images DIR --out DIR'; README 'GPU run')"
	@echo "make fuzz   send thousands of mutated DICOM conversations to the listener; figures in bench/RESULTS.md"
	@echo "make demo   the end-to-end demo: PACS -> synthpacs -> GAN -> synthetic study -> PACS"
	@echo "make viewer install OHIF Viewer's prebuilt bundle (npm) into $(VIEWER_DIR), served at /viewer"
	@echo "make demo-viewer  a synthetic study in OHIF: a headless-Chromium screenshot, then the viewer left running"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "synthpacs needs Python >= 3.11; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV) || { echo "python venv failed: on Debian run 'apt-get install python3-venv'"; exit 1; }
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $@

venv: $(STAMP)

# The real peers that integration tests and benchmarks talk to. Installed when missing (Debian/Ubuntu).
deps:
	@missing=""; \
	command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	command -v Orthanc >/dev/null || missing="$$missing orthanc"; \
	command -v dciodvfy >/dev/null || missing="$$missing dicom3tools"; \
	ls /usr/lib/orthanc/libOrthancDicomWeb.so* /usr/share/orthanc/plugins/libOrthancDicomWeb.so* >/dev/null 2>&1 || missing="$$missing orthanc-dicomweb"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		if command -v apt-get >/dev/null; then \
			echo "installing Debian packages:$$missing"; \
			$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
		else \
			echo "warning: missing$$missing and no apt-get; tests that need them will be skipped"; \
		fi; \
	fi

run: deps venv
	$(BIN)/synthpacs serve

test: deps venv
	$(BIN)/pytest $(PYTEST_ARGS)

bench: deps venv
	@# Orthanc's PostgreSQL index plugin: the peer of bench_scaleout on PostgreSQL (skipped there without it).
	@ls /usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so >/dev/null 2>&1 \
		|| { command -v apt-get >/dev/null && $(SUDO) apt-get install -y -qq orthanc-postgresql >/dev/null; } \
		|| echo "warning: orthanc-postgresql could not be installed; bench_scaleout skips Orthanc on PostgreSQL"
	$(BIN)/python -m bench

# The prepared GPU run. On a GPU machine without this venv it runs the Python that holds torch there.
BENCH_GPU_ARGS ?=
bench-gpu:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) -m bench gpu $(BENCH_GPU_ARGS)

# FUZZ_INPUTS mutated PDU/DIMSE conversations against `synthpacs scp` (bench/fuzz_dicom.py); fails on a finding.
FUZZ_INPUTS ?= 3000
fuzz: deps venv
	$(BIN)/python -m bench.fuzz_dicom --inputs $(FUZZ_INPUTS) --write

demo: deps venv
	$(BIN)/python -m service.demo

# OHIF Viewer 2's prebuilt "script tag" bundle from the npm registry (README "Web viewer"): the tarball only,
# no install scripts run, checked against its sha256; the bundle and its licence go to VIEWER_DIR (git-ignored).
VIEWER_DIR ?= var/viewer
OHIF_VIEWER_VERSION := 4.12.51
OHIF_VIEWER_SHA256 := 60931e78123d2637b7cc7cde5ad48f10961d69be1e58eb6d644bd7d727613b70
viewer: $(VIEWER_DIR)/index.umd.js

$(VIEWER_DIR)/index.umd.js:
	@command -v npm >/dev/null || { echo "make viewer needs npm (Debian: apt-get install npm)"; exit 1; }
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	(cd "$$tmp" && npm pack --silent @ohif/viewer@$(OHIF_VIEWER_VERSION) >/dev/null) && \
	echo "$(OHIF_VIEWER_SHA256)  $$tmp/ohif-viewer-$(OHIF_VIEWER_VERSION).tgz" | sha256sum --check --quiet && \
	tar -xzf "$$tmp/ohif-viewer-$(OHIF_VIEWER_VERSION).tgz" -C "$$tmp" package/dist/index.umd.js package/LICENSE && \
	mkdir -p "$(VIEWER_DIR)" && cp "$$tmp/package/LICENSE" "$(VIEWER_DIR)/LICENSE" && \
	cp "$$tmp/package/dist/index.umd.js" "$(VIEWER_DIR)/index.umd.js.tmp" && mv "$(VIEWER_DIR)/index.umd.js.tmp" "$@"
	@echo "OHIF Viewer $(OHIF_VIEWER_VERSION) in $(VIEWER_DIR): synthpacs serve --viewer-dir $(VIEWER_DIR), then http://127.0.0.1:8080/viewer/"

# A synthetic study written by the bundled generator, shown by OHIF in headless Chromium (screenshot under
# var/), then the service left running for a browser on this machine; Ctrl-C ends it.
demo-viewer: deps venv viewer
	$(BIN)/python -m service.viewer_demo --viewer-dir $(VIEWER_DIR)

# Regenerate the committed gRPC stubs after editing proto/synthpacs/v1/*.proto.
proto: venv
	cd proto && $(abspath $(BIN))/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. synthpacs/v1/*.proto

clean:
	rm -rf $(VENV) .pytest_cache
