# The README's two commands: `make book` and `make test`. Each works on its own on a fresh
# machine with Python 3.11: it creates .venv if missing, installs, and fetches the data.
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
SMOKE_BOOK := _build/smoke_book

# Kernels started by papermill, nbval and jupyter-book must find the venv's python first.
export PATH := $(BIN):$(PATH)
# On 2 shared cores libgomp busy-waits with more threads: a 0.1 s step can take 9 s.
export OMP_NUM_THREADS := 1
export MKL_NUM_THREADS := 1
export PYDEVD_DISABLE_FILE_VALIDATION := 1
# glibc hands freed memory back to the system and the next large tensor then faults in fresh
# zeroed pages: 15% of a SASRec fit was such system time. Blocks up to 32 MB (glibc's maximum)
# come from the heap, and freed memory stays in the process for the next one: SASRec and ALS
# fits 10% faster. recsys_ref.scale.measure releases it before it measures memory.
export MALLOC_MMAP_THRESHOLD_ := 33554432
export MALLOC_TRIM_THRESHOLD_ := 8589934592
# pip installs without byte-compiling every module of every package (--no-compile: 150 s ->
# 63 s); Python compiles the modules that are imported, once, and keeps them, which a
# PYTHONDONTWRITEBYTECODE in the caller's environment would prevent (5 s per kernel start).
unexport PYTHONDONTWRITEBYTECODE
# torch's CPU wheel does float32 matrix products and LAPACK with Intel MKL, which takes its
# AVX-512 kernels only on Intel processors: on an AMD processor with AVX-512 (the book's
# machines are AMD EPYC, Zen 5) it runs its AVX2 kernels at half the speed (a 2000 x 2000
# product, one thread: 88 -> 205 GFLOP/s; SASRec's epoch 1.7x, EASE 2x faster). MKL asks
# mkl_serv_intel_cpu_true() for the vendor; a one-line library loaded first answers yes, and MKL
# then chooses its kernels by the instruction sets the processor reports. Built at install time
# only on such a processor with a C compiler; results agree to float32 rounding
# (tests/test_mkl_shim.py). Every process started by make gets it; a reader's Jupyter does not.
MKL_SHIM := $(CURDIR)/$(VENV)/lib/libmkl_vendor_shim.so
CALLER_LD_PRELOAD := $(LD_PRELOAD)
export LD_PRELOAD = $(strip $(wildcard $(MKL_SHIM)) $(CALLER_LD_PRELOAD))

.PHONY: book test install data lint unit chapters smoke-book site-check bench compare clean

# Chapters are executed two at a time into Jupyter Book's execution cache (one single-threaded
# kernel per core), then the build reads them from it; unchanged chapters are not re-run.
book: data
	$(BIN)/python tests/execute_chapters.py . --jobs 2
	$(BIN)/jupyter-book build .
	@echo "The book is at file://$(CURDIR)/_build/html/index.html"

test: data lint unit chapters smoke-book site-check
	@echo "make test: all checks passed"

install: $(VENV)/.installed $(VENV)/.mkl_shim

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: on the book's machines 2.13.0 is a local CPU build, while an
# unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install --no-compile torch==2.13.0
	$(BIN)/python -m pip install --no-compile -e ".[book,test]"
	touch $@

# The MKL shim (see MKL_SHIM above), once per environment; a failed compile only costs speed.
$(VENV)/.mkl_shim: | $(BIN)/python
	@if grep -q AuthenticAMD /proc/cpuinfo 2>/dev/null && grep -qw avx512f /proc/cpuinfo \
	    && command -v cc >/dev/null; then \
	  printf 'int mkl_serv_intel_cpu_true(void) { return 1; }\n' \
	    | cc -shared -fPIC -O2 -x c -o $(MKL_SHIM) - && echo "built $(MKL_SHIM)" \
	    || echo "MKL shim not built (cc failed): MKL keeps its AVX2 kernels"; fi
	touch $@

data: install
	$(BIN)/python -m recsys_ref.data

lint: install
	$(BIN)/ruff check .

# Two test processes at a time (pytest-xdist); fits shared through the model cache take its
# per-key lock.
unit: install
	$(BIN)/python -m pytest -q -n 2 -m "not chapters and not site"

# Executes every chapter at SMOKE size with papermill, asserts its claims, re-runs it with nbval;
# two chapters at a time, the longest first (pytest-xdist, one single-threaded kernel per core).
chapters: data
	$(BIN)/python -m pytest -q -m chapters -n 2 tests/test_chapters.py

# Strict build of the site from the notebooks the chapter tests executed (no third run).
smoke-book: install
	$(BIN)/python tests/stage_book.py _build/smoke $(SMOKE_BOOK)
	$(BIN)/jupyter-book build $(SMOKE_BOOK) --all -W -n --keep-going

# The built site in headless Chromium (the system's, Debian package `chromium`) as a reader
# sees it at 1280 and 390 px; screenshots land in _build/site_check. Two test processes, each
# with its own browser: the pages mostly wait on the browser (90 -> 60 s).
site-check: smoke-book
	$(BIN)/python -m pytest -q -n 2 -m site tests/test_site.py

# Times every model's fit and full-ranking evaluation on MovieLens-100K at one thread and
# writes _build/bench/bench.{md,csv} (not part of `make test`; about 10 minutes).
bench: data
	$(BIN)/python benchmarks/bench.py --out _build/bench $(BENCH_ARGS)

# Executes chapters with the code of commit OLD and with the working tree's at the same time,
# one kernel per core, and writes _build/side_by_side/side_by_side.{md,csv}: seconds of both and
# which glued values differ (timings on this machine swing between hours, not side by side).
# e.g. make compare OLD=HEAD~1 COMPARE_ARGS="--chapters deep_recommenders --smoke"
compare: data
	@test -n "$(OLD)" || { echo "usage: make compare OLD=<commit> [COMPARE_ARGS=...]"; exit 2; }
	$(BIN)/python benchmarks/side_by_side.py $(OLD) $(COMPARE_ARGS)

clean:
	rm -rf _build
