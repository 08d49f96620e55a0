# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the whole suite).
# Both create a project-local .venv. torch is installed first from the pinned CPU build so that no
# later requirement pulls the multi-GB CUDA build (see README, "Installation").
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
# ffmpeg (the program): transformers' audio pipelines decode file paths with it. The demo's held-out task suite:
# two soundfonts, the Hedgewars voice packs (spoken phrases), and the three soundfonts of its diverse pre-training pool.
APT_PACKAGES := libavcodec59 libavformat59 libavdevice59 libavfilter8 libswscale6 libswresample4 libavutil57 \
	ffmpeg fluidsynth fluid-soundfont-gm timgm6mb-soundfont hedgewars-data \
	csound-soundfont opl3-soundfont musescore-general-soundfont-small

.PHONY: install test shared-tests demo lint clean system-deps

system-deps:
	@if command -v apt-get >/dev/null 2>&1 && ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		echo ">> installing system packages (FFmpeg libraries for audio decoding, fluidsynth + soundfonts, voices)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi

$(STAMP): setup.py requirements-dev.txt
	$(MAKE) system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e . -r requirements-dev.txt
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

# The demo lives beside the package (demo/), not in it: run from the repository root.
demo: install
	$(PY) -m demo.run

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
