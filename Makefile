# One command per task; CI runs the same ones. `make help` lists them.
PY ?= .venv/bin/python
CONFIG ?= configs/binary.yaml
DATA ?= ../shared/data/chest_xray
FILMS ?= 200
REPEATS ?= 3
CLIENTS ?= 16
DURATION ?= 60
SERVE_MODEL ?= binary-fast

.PHONY: help setup test test-slow docs fuzz bench bench-all bench-workers bench-serve bench-train bench-dicom site-demo adapt-demo lint format train serve
help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'
setup:  ## create .venv and install pneumoscan with training, serving, DICOM and test extras
	python3 -m venv .venv && $(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q -e ".[train,serve,dicom,ray,dev]"
test:  ## the default test suite (skips slow tests)
	$(PY) -m pytest -q
test-slow:  ## only the slow tests
	$(PY) -m pytest -q -m slow
docs:  ## rewrite the CLI reference (docs/cli.md) and build the docs site, strict, into build/site/
	$(PY) -m pneumoscan.cli.reference
	$(dir $(PY))mkdocs build --strict
fuzz:  ## 10,000 fuzz cases over read_image and predict; prints the counts
	PNEUMOSCAN_FUZZ_CASES=10000 $(PY) -m pytest -q -s -m slow tests/core/test_fuzz.py
bench:  ## prediction speed, whole processes -> docs/benchmarks.md (binary-fast, full table) and the Speed section of each model card
	.venv/bin/pneumoscan bench --model binary-fast --images ../shared/data/chest_xray/train
	.venv/bin/pneumoscan bench --model binary --images ../shared/data/chest_xray/train --full-size-films 0 --out build/bench-binary.md
	.venv/bin/pneumoscan bench --model three-class --images ../shared/data/chest_xray/train --full-size-films 0 --out build/bench-three-class.md
bench-workers:  ## predict --workers 1 vs 2 on full-size (2,000 px) JPEG and 16-bit DICOM films -> docs/benchmarks.md
	$(dir $(PY))pneumoscan bench-workers --model binary --images $(DATA)/train --films $(FILMS) --repeats $(REPEATS)
bench-all: bench bench-serve bench-dicom  ## every speed figure of docs/benchmarks.md and docs/dicom.md in one run (about 20 min on 2 idle cores)
bench-serve:  ## serving under load: CLIENTS upload the same films at 256 px, then at 2,000 px, to a real `pneumoscan serve --model SERVE_MODEL` for DURATION s each -> docs/benchmarks.md
	rm -rf build/serve-films-256 build/full-size-films
	$(PY) -m pneumoscan.research.bench $(DATA)/val build/serve-films-256 --films 64 --shorter-side 0
	$(PY) -m pneumoscan.research.bench $(DATA)/val build/full-size-films --films 64
	$(PY) -m pneumoscan.devtools.loadtest --clients $(CLIENTS) --duration $(DURATION) --model $(SERVE_MODEL) \
	  --images build/serve-films-256 --images build/full-size-films \
	  --films-note "validation films as stored (256 px), then the same films upscaled (bicubic) to a 2,000 px shorter side, JPEG quality 95" --out docs/benchmarks.md
bench-train:  ## training speed: loader vs model step at 160 and 224 px, 1 vs 2 DDP processes -> docs/benchmarks.md
	$(PY) -m pneumoscan.research.bench_train --config configs/three_class_robust.yaml --out docs/benchmarks.md
bench-dicom:  ## DICOM node throughput and latency into a real Orthanc (needs the orthanc package), single network -> docs/dicom.md
	$(PY) -m pneumoscan.devtools.dicom_bench --images $(DATA)/train --films 80 --shorter-side 0 --shorter-side 2000 --model binary-fast --out docs/dicom.md
site-demo:  ## a simulated new site: validate, calibrate and conformal sets -> docs/site/
	$(PY) -m pneumoscan.site.simulate $(DATA) --model binary --out build/site --films 400 --shift zoomed
	.venv/bin/pneumoscan validate build/site --model binary --out docs/site/validate
	.venv/bin/pneumoscan calibrate build/site --model binary --out build/site-binary --target-sensitivity 0.95 --refit-gate
	.venv/bin/pneumoscan calibrate build/site/labels.csv --model three-class --out build/site-three-class
	for name in binary three-class; do mkdir -p docs/site/$$name && (cd build/site-$$name && \
	  cp -r report.md card.md calibration.json learning_curve.png before after ../../docs/site/$$name/); done
adapt-demo:  ## a simulated 400-film zoomed site: calibrate-only vs fine-tune by patient-grouped cross-validation -> docs/site/adapt/
	$(PY) -m pneumoscan.site.simulate $(DATA) --model binary --out build/site-adapt --films 400 --shift zoomed
	rm -rf build/site-adapted
	.venv/bin/pneumoscan adapt build/site-adapt --model binary --out build/site-adapted --rule youden
	mkdir -p docs/site/adapt && cp build/site-adapted/report.md build/site-adapted/adapt.json docs/site/adapt/
lint:  ## ruff lint and format check, and the import contracts (lint-imports)
	$(PY) -m ruff check src tests && $(PY) -m ruff format --check src tests && $(dir $(PY))lint-imports
format:  ## ruff format
	$(PY) -m ruff format src tests && $(PY) -m ruff check --fix src tests
train:  ## train a recipe: make train CONFIG=configs/three_class.yaml
	.venv/bin/pneumoscan train --config $(CONFIG)
serve:  ## the web page and REST API on http://127.0.0.1:8000 (docs at /docs)
	.venv/bin/pneumoscan serve
