# gpts-fairseq: set-up, demo and tests.
#
#   make demo    set up, then GP-TS (trend reward model) against fixed rho 0.15 and 0.30, a tiny RoBERTa
#                pre-trained three times side by side (~6 min on 2 idle cores, no download) + report
#   make test    set up, then the test suite
#   make gpu-check   on a CUDA machine (no set-up, no network): the GPU check (benchmarks/gpu_check.py)
#
# Set-up goes into the active virtual environment, or into .venv/ here when none is active.
# It is idempotent: a second `make install` changes nothing.

ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := $(CURDIR)/.venv
endif
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is installed only when the environment has none. Override for another build, e.g.
# make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu130"
TORCH_SPEC ?= torch==2.13.0
# PyPI's fairseq 0.12.2 does not import on Python 3.11 (dataclass defaults); ve-fairseq is a
# maintained fork of the same code with wheels for 3.11. Installed only when no fairseq is.
FAIRSEQ_SPEC ?= ve-fairseq==0.12.3
# fairseq's real runtime dependencies. Its metadata also asks for torchaudio, which would pull
# a second (CUDA) torch and is used only by speech tasks, hence --no-deps plus this list.
FAIRSEQ_DEPS := cffi cython "hydra-core>=1.3.2,<1.4" "omegaconf>=2.1,<2.4" numpy regex \
	"sacrebleu>=1.4.12" tqdm bitarray scikit-learn packaging
STAMP := $(VENV)/.gpts-fairseq-installed
SOURCES := setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cu)

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): $(SOURCES)
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH_SPEC)
	@$(PY) -c "import fairseq" 2>/dev/null || { \
		$(PIP) install --no-deps $(FAIRSEQ_SPEC) && $(PIP) install $(FAIRSEQ_DEPS); }
	$(PIP) install --quiet --upgrade "pip>=23.3" ninja wheel "setuptools>=64"
	# --no-build-isolation: the extension must be built against the torch installed above,
	# never a second one that pip would fetch into an isolated build environment.
	$(PIP) install --no-build-isolation --use-pep517 -e ".[test]"
	@$(PY) -c "import gpts_fairseq.masking.ops as o; assert o.is_available(), 'extension not built'"
	@touch $(STAMP)

demo: install
	$(PY) -m gpts_fairseq demo --out demo

# One pytest worker per logical CPU (TEST_WORKERS=0: one process); tests that share a
# module-scoped fixture stay on one worker (tests/conftest.py groups them for --dist loadgroup).
TEST_WORKERS ?= logical
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests

bench: install
	$(PY) -m benchmarks.masking
	$(PY) -m benchmarks.bandit_overhead
	$(PY) -m benchmarks.nonstationary
	$(PY) -m benchmarks.train_speed

# The one GPU check (at most 8 minutes on one GPU): builds the op for the GPU present, CUDA tests,
# CPU/GPU mask equality, op vs HF-style timing, a 200-update GP-TS fairseq-train; writes
# benchmarks/results/gpu_check.json. Without a GPU it says so, marks those steps skipped and runs
# the CPU smoke steps. No `install` prerequisite: it uses the Python that has torch and fairseq.
.PHONY: gpu-check
GPU_CHECK_PY := $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_CHECK_PY) -m benchmarks.gpu_check

clean:
	rm -rf build *.egg-info gpts_fairseq/_C*.so demo
