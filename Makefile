# Atelier: the two commands a fresh machine needs are `make serve` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 3000
export BENTOML_DO_NOT_TRACK := True
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: serve test setup system-deps verify bench bench-quick bench-steps clean

$(VENV)/.installed: pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip==25.3"
	$(PY) -m pip install -q -e ".[export,test]"
	touch $@

setup: $(VENV)/.installed

# Debian packages the offline data comes from (only the export world and its tests need them), and the
# browser the playground's tests drive.
system-deps:
	@if [ ! -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || [ ! -f /usr/share/unicode/emoji/emoji-test.txt ]; then \
		echo "installing Debian fonts-noto-color-emoji unicode-data"; \
		$$(command -v sudo) apt-get update -q && $$(command -v sudo) apt-get install -y -q fonts-noto-color-emoji unicode-data; \
	fi
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "installing Debian chromium (the playground's browser tests: tests/test_playground.py)"; \
		$$(command -v sudo) apt-get update -q && $$(command -v sudo) apt-get install -y -q chromium \
			|| echo "chromium not installed: tests/test_playground.py's browser tests will skip"; \
	fi

serve: setup
	$(VENV)/bin/bentoml serve service:Atelier --host 127.0.0.1 --port $(PORT)

test: setup
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

verify: setup
	$(PY) -m export verify

# Benchmarks (bench/): full writes docs/PERFORMANCE.md; quick and steps leave docs/ alone.
bench: setup
	$(PY) -m bench full

bench-quick: setup
	$(PY) -m bench quick

bench-steps: setup
	$(PY) -m bench steps

clean:
	rm -rf $(VENV) .cache .pytest_cache

# Kubernetes (k8s/, docs/DEPLOY.md). checkov pins packages this project pins differently (packaging,
# networkx, python-dateutil), so it lives in a venv of its own under .cache/, made on first use.
CHECKOV_VENV := .cache/checkov-venv
$(CHECKOV_VENV)/bin/checkov:
	python3.11 -m venv $(CHECKOV_VENV) || python3 -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q "pip==25.3" "checkov==3.3.30"

.PHONY: k8s-check capacity
k8s-check: setup $(CHECKOV_VENV)/bin/checkov
	ATELIER_CHECKOV=$(CHECKOV_VENV)/bin/checkov $(PY) -m pytest -q tests/test_k8s.py tests/test_bentofile.py

# The capacity simulation at full scale: docs/deploy/capacity.{json,md,png}
capacity: setup
	$(PY) -m bench.capacity --scale full --out docs/deploy

# Load-test a served Atelier, local or a cluster (loadtests/, docs/LOADTESTS.md); exits non-zero on an SLO miss:
#   make loadtest URL=https://atelier.example.com LOADTEST_ARGS="--shape spike --users 4 --run-time 5m"
URL ?= http://127.0.0.1:$(PORT)
.PHONY: loadtest
loadtest: setup
	$(PY) -m loadtests.run $(URL) $(LOADTEST_ARGS)
