# ctpress: every target creates/refreshes the virtual environment it needs.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
PYTHON  ?= python3
OUT     ?= results/demo

.PHONY: venv demo test lint bench bench-platform bench-streaming bench-batch bench-predictive \
	bench-sparse bench-dvc study-view-prediction study-predictive-distribution hardening fuzz clean

$(STAMP): pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ctpress demo --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/run_all.py --out results/benchmarks

# Rate-target cost per codec, import/--help times, compress CLI vs numpy + imagecodecs.
bench-platform: $(STAMP)
	$(PY) benchmarks/bench_platform.py --out results/benchmarks

# An 8 GB memory-mapped scan compressed and decompressed chunk by chunk (needs ~20 GB of disk).
bench-streaming: $(STAMP)
	$(PY) benchmarks/bench_streaming.py --out results/benchmarks --gigabytes 8

# 8 scans compressed with 1 and with 2 Dask workers, and one scan split into chunk tasks.
bench-batch: $(STAMP)
	$(PY) benchmarks/bench_batch.py --out results/benchmarks

# Issue 14: lossless, near-lossless and noise-bounded coding of held-out raw CT data against
# the Poisson entropy floor (the convlstm rows appear once that codec is registered; ~36 min).
bench-predictive: $(STAMP)
	$(PY) benchmarks/bench_predictive.py --out results/benchmarks

# Issue 16: sparse views + U-Net restoration against linear interpolation and the codecs that
# keep every view, in the reconstruction domain, on held-out scans (~30 min).
bench-sparse: $(STAMP)
	$(PY) benchmarks/bench_sparse.py --out results/benchmarks

# Issue 15: dvc against hyperprior, JPEG 2000, HTJ2K, SPERR, SZ3 and ZFP (BD-rates, the
# zero-motion ablation, speed) on the default scan and held-out cone scans (~30 min).
bench-dvc: $(STAMP)
	$(PY) benchmarks/bench_dvc.py --out results/benchmarks

# Issue 15: what inter-view prediction (zero motion, global/block motion, two references,
# B views) saves over coding views alone, with an idealised wavelet coder, against SPERR.
study-view-prediction: $(STAMP)
	$(PY) benchmarks/study_view_prediction.py --out results/benchmarks

# Issue 14: convlstm's adaptive context model against a learned per-pixel distribution (~6 min).
study-predictive-distribution: $(STAMP)
	$(PY) benchmarks/study_predictive_distribution.py --out results/benchmarks

# Corruption matrix and crash tests at full size (every bit of every chunk, many kills).
hardening: $(STAMP)
	CTPRESS_FULL=1 $(PY) -m pytest -n 2 -q tests/test_corruption.py tests/test_crash.py tests/test_fuzz.py

# Coverage-guided fuzzing of the .ctpz reader, 10 minutes per mode (see fuzz/README.md).
FUZZ_SECONDS ?= 600
fuzz: $(STAMP)
	$(PY) fuzz/run.py --seconds $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) results .pytest_cache .mypy_cache .ruff_cache
