# ETA1 developer and operator entry points. Run `make help` for the list.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ETA1 := $(VENV)/bin/eta1
DATA ?= ../shared/data/cicids2017_improved_rnd2500
ES_PORT ?= 9200
ES_URL := http://127.0.0.1:$(ES_PORT)
DEMO_INDEX ?= cic_sample

.PHONY: help install train convert test test-unit es es-stop demo bench clean

help:
	@echo "make install   create $(VENV) and install ETA1 with training and test extras"
	@echo "make demo      install, start a local node, load the sample flows, run the daemon, print alerts"
	@echo "make test      run every test (starts its own Elasticsearch node)"
	@echo "make test-unit run the tests that need no Elasticsearch"
	@echo "make train     train the XGBoost model on $(DATA)"
	@echo "make convert   export models/eta1.json to models/eta1.onnx, checking parity first"
	@echo "make es        start a local node on $(ES_URL); make es-stop stops it"
	@echo "make bench     run the benchmarks and rewrite bench/RESULTS.md"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

train: install
	$(ETA1) train --data $(DATA)

convert: install
	$(ETA1) convert --data $(DATA)

# pytest exits 5 when it collected no tests; that must fail, not pass.
test: install
	$(PY) -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

test-unit: install
	$(PY) -m pytest -q -m "not es"

es:
	ES_PORT=$(ES_PORT) bash es/start.sh

es-stop:
	bash es/stop.sh

demo: install
	@if curl -fsS $(ES_URL)/_cluster/health >/dev/null 2>&1; then echo "using the node already on $(ES_URL)"; \
	else ES_PORT=$(ES_PORT) bash es/start.sh; fi
	$(ETA1) load $(DATA)/*.csv.gz --index $(DEMO_INDEX) --es-url $(ES_URL) --refresh
	ETA1_CLUSTER__HOSTS=$(ES_URL) $(ETA1) run --until-idle

bench: install
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
