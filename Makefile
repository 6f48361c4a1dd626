# distilforge: `make demo` runs the whole job on embedded defaults; `make test` runs the suite.
# Both start with `make setup` (idempotent; slow builds cached under ~/.cache/distilforge).
SHELL := /bin/bash
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test smoke bench clean-runs

setup:
	@bash .ci/setup.sh

demo: setup
	.venv/bin/distilforge run examples/banking77/task.yaml --profile demo --out runs/demo
	.venv/bin/distilforge report runs/demo --learning-curve benchmarks/results/outcome.json

smoke: setup
	.venv/bin/distilforge run examples/banking77/task.yaml --profile smoke --out runs/smoke

test: setup
	@bash .ci/install_browser.sh
	DISTILFORGE_NO_SKIP=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

bench: setup
	OMP_NUM_THREADS=1 $(PY) benchmarks/dedup.py

clean-runs:
	rm -rf runs/
