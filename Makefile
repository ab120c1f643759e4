# embedfm: `make demo` (set up + train CE and CE+triplet + eval + viz + explore page) and `make test`;
# `make test-fast` (no training on real data, under a minute), `make test-isa` (the numeric tests under the AVX2
# kernels), `make lint`, `make format`, `make docs`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
DEMO   := artifacts/demo
# torch/torchvision pinned to the releases this machine serves from local disk; elsewhere any
# torch >= 2.1 works (see pyproject.toml), override with `make TORCH_PIN= ...`.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-fast test-isa test-deps lint format docs venv data clean-demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(PIP) install -q $(TORCH_PIN) 2>&1 | grep -v "^WARNING: Location" || true
	$(PIP) install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import embedfm, torch, torchvision, faiss, pytorch_metric_learning, umap, optuna, cleanlab" 
	touch $@

venv: $(VENV)/.installed

# Fashion-MNIST: Debian's package puts the IDX files in /usr/share/datasets/fashion-mnist.
# Where apt is not available (or not root), embedfm downloads them on first use.
data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  echo "data: /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null; \
	else echo "data: not installed system-wide; embedfm will download it into ~/.cache/embedfm"; fi

# PostgreSQL for the multi-worker tune test, Chromium + chromedriver for the explore page's browser test
# (each test is skipped with one line where its program cannot be installed)
test-deps:
	@if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq postgresql || (apt-get update -qq && apt-get install -y -qq postgresql)) >/dev/null 2>&1 \
	    || echo "test-deps: postgresql not installed; its test will be skipped"; \
	fi
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq chromium chromium-driver \
	    || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)) >/dev/null 2>&1 \
	    || echo "test-deps: chromium not installed; the explore page's browser test will be skipped"; \
	fi

demo: venv data
	$(VENV)/bin/embedfm train --loss ce --out $(DEMO)/ce --overwrite --no-progress
	$(VENV)/bin/embedfm train --loss triplet --out $(DEMO)/triplet --overwrite --no-progress
	$(VENV)/bin/embedfm eval $(DEMO)/ce $(DEMO)/triplet --out $(DEMO) --no-progress
	$(VENV)/bin/embedfm viz $(DEMO)/ce $(DEMO)/triplet --out $(DEMO)
	$(VENV)/bin/embedfm explore $(DEMO)/ce $(DEMO)/triplet --out $(DEMO)/explore.html
	@echo "report: $(DEMO)/report.md (report.json, confusion.png, confusion_diff.png, most_confused.png, umap.png); page: $(DEMO)/explore.html"

test: venv data test-deps
	$(VENV)/bin/python -m pytest

test-fast: venv
	$(VENV)/bin/python -m pytest -m "not slow"

# the numeric tests (pytest -m numeric: pinned training figures, eager vs compiled, fused vs unfused kernels) again
# under the AVX2 kernels of ATen, oneDNN and inductor, whatever the CPU; `make test` ran them at the CPU's default
# (AVX-512 or AMX where it has them). Under a minute.
test-isa: venv
	ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 $(VENV)/bin/python -m pytest -m numeric

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# every table in docs/results/ and README's headline table, rebuilt from artifacts/reference/
docs: venv
	$(VENV)/bin/python scripts/make_docs.py

clean-demo:
	rm -rf $(DEMO)
