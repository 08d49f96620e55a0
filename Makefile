# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the whole suite).
# Both create a project-local .venv with exactly the versions in the lock, requirements-lock.txt (see README,
# "Installation"). torch is installed first, on its own, so that no later requirement pulls the multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements-lock.txt
# What pip may install: the lock (make install) or a file with only the packages this machine holds back (test-latest).
CONSTRAINTS ?= $(LOCK)
TORCH_VERSION := $(shell sed -n 's/^torch==//p' $(LOCK))
# ffmpeg (the program): transformers' audio pipelines decode file paths with it. The demo's held-out task suite:
# two soundfonts, the Hedgewars voice packs (spoken phrases), and the three soundfonts of its diverse pre-training pool.
APT_PACKAGES := libavcodec59 libavformat59 libavdevice59 libavfilter8 libswscale6 libswresample4 libavutil57 \
	ffmpeg fluidsynth fluid-soundfont-gm timgm6mb-soundfont hedgewars-data \
	csound-soundfont opl3-soundfont musescore-general-soundfont-small

.PHONY: install test test-latest test-lowest shared-tests demo lint clean system-deps

system-deps:
	@if command -v apt-get >/dev/null 2>&1 && ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		echo ">> installing system packages (FFmpeg libraries for audio decoding, fluidsynth + soundfonts, voices)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi

# After installing, every package in the venv must be one the lock names, at its version (`pip freeze` gives torch's
# build as a local label, +cpu, which the lock leaves to pip). A dependency the lock lacks stops here, not in a test.
$(STAMP): setup.py requirements-dev.txt $(CONSTRAINTS)
	$(MAKE) system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(CONSTRAINTS) --upgrade pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e . -r requirements-dev.txt
	$(PY) -m pip freeze --all --exclude-editable | sed 's/+[a-z0-9.]*$$//' | sort -f > $(VENV)/installed.txt
	@if [ "$(CONSTRAINTS)" = "$(LOCK)" ]; then \
		grep -v '^#' $(LOCK) | sort -f | diff - $(VENV)/installed.txt >/dev/null || { \
			echo ">> the venv differs from $(LOCK) (< lock, > installed):"; \
			grep -v '^#' $(LOCK) | sort -f | diff - $(VENV)/installed.txt; exit 1; }; \
	fi
	touch $(STAMP)

install: $(STAMP)

# transformers' own shared model tests (tests/test_transformers_common.py runs them on the BEATs classes) come from the
# source distribution of the installed transformers: fetched once with pip into .cache/ (ignored by git), only its
# tests/ folder unpacked. Without them that test file skips (`parameterized`, which they import, is in requirements-dev.txt).
TRANSFORMERS_SRC := .cache/transformers-src

shared-tests: install
	@version=$$($(PY) -c "import transformers; print(transformers.__version__)"); \
	if [ ! -f $(TRANSFORMERS_SRC)/transformers-$$version/tests/test_modeling_common.py ]; then \
		echo ">> fetching the transformers $$version source distribution for its shared tests"; \
		mkdir -p $(TRANSFORMERS_SRC) && \
		$(PY) -m pip download -q --no-deps --no-binary :all: transformers==$$version -d $(TRANSFORMERS_SRC) && \
		tar -xzf $(TRANSFORMERS_SRC)/transformers-$$version.tar.gz -C $(TRANSFORMERS_SRC) transformers-$$version/tests; \
	fi

# The float-sensitive tests run again on two other MKL code paths (FFT and matmul), to see here what another CPU does;
# tests/test_mkl_code_paths.py says at the end of the first run whether those settings change anything on this CPU.
test: install shared-tests
	$(PY) -m pytest -q tests
	MKL_CBWR=AVX2 $(PY) -m pytest -q -m float_sensitive tests
	MKL_CBWR=COMPATIBLE $(PY) -m pytest -q -m float_sensitive tests

# The upgrade path: the whole suite in a venv of its own (.venv-latest) with the newest versions pip finds, except
# torch and torchcodec, which stay at the lock's versions (the newest CPU builds this machine can run, see README).
# At the end it prints what differs from the lock and leaves the tested set in .cache/test-latest/; to move the lock,
# copy that file over requirements-lock.txt, after the run is green.
LATEST := .cache/test-latest
test-latest:
	rm -rf .venv-latest $(LATEST) && mkdir -p $(LATEST)
	grep -E '^(torch|torchcodec)==' $(LOCK) > $(LATEST)/held-back.txt
	$(MAKE) test VENV=.venv-latest CONSTRAINTS=$(LATEST)/held-back.txt
	{ echo "# The tested stack: pip freeze of the last green make test-latest (torch's local build label left out)."; \
	  cat .venv-latest/installed.txt; } > $(LATEST)/requirements-lock.txt
	@echo ">> make test-latest passed. What differs from $(LOCK) (< lock, > newest):"
	@diff $(LOCK) $(LATEST)/requirements-lock.txt && echo "   nothing" || true
	@echo ">> to move the lock: cp $(LATEST)/requirements-lock.txt $(LOCK)"

# The lowest versions setup.py and requirements-dev.txt declare (each `>=X` installed as `==X`), the rest resolved by
# pip: the run that backs the lower bounds in install_requires.
LOWEST := .cache/test-lowest
test-lowest:
	rm -rf .venv-lowest $(LOWEST) && mkdir -p $(LOWEST)
	sed -n 's/^ *"\{0,1\}\([A-Za-z0-9_.-]*\)>=\([0-9][0-9.]*\).*/\1==\2/p' setup.py requirements-dev.txt > $(LOWEST)/lowest.txt
	cat $(LOWEST)/lowest.txt
	$(MAKE) test VENV=.venv-lowest CONSTRAINTS=$(LOWEST)/lowest.txt
	@echo ">> make test-lowest passed on:"; grep -Ei "^($$(sed 's/==.*//' $(LOWEST)/lowest.txt | paste -sd'|'))==" .venv-lowest/installed.txt

# The demo lives beside the package (demo/), not in it: run from the repository root.
demo: install
	$(PY) -m demo.run

clean:
	rm -rf .venv .venv-latest .venv-lowest build *.egg-info src/*.egg-info
