# corem_ingress — see README.md
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/dev.yaml
# Test processes: most of the suite waits on sockets and peers, so 3 workers on 2 cores
# take the run from ~13 to ~5.5 minutes; one file stays on one worker (module fixtures).
TEST_WORKERS ?= 3

# The hot modules setup.py compiles with mypyc (COMPILED_MODULES in corem_ingress/compiled.py).
COMPILED_SOURCES := $(shell grep -oE '^    "corem_ingress\.[a-z_.]+",' corem_ingress/compiled.py \
	| tr -d '", ' | tr . / | sed 's/$$/.py/')

.PHONY: setup compile run test test-pure test-unit lint typecheck check bench dev-certs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py scripts/install-deps.sh
	./scripts/install-deps.sh
	touch $@

# Rebuild the compiled modules of the editable install when their source changed and the
# installed build is not fully compiled any more (a .so older than its .py is never
# loaded: the package falls back to the .py and warns).
compile: $(VENV)/.compiled

$(VENV)/.compiled: $(COMPILED_SOURCES) setup.py | setup
	env -u COREM_PURE $(PY) -W ignore -c "import sys; from corem_ingress import compiled as c; \
		sys.exit(c.build() != 'compiled')" \
		|| $(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $@

certs-dev/ca.pem: | setup
	$(VENV)/bin/corem-ingress dev-certs --out certs-dev

.corem/psk-kek:
	mkdir -p .corem && umask 077 && $(VENV)/bin/corem-ingress kek generate --id dev > $@

dev-certs: certs-dev/ca.pem

# Install everything, then run the broker on the dev config (embedded Redis, dev certs, dev KEK).
run: setup certs-dev/ca.pem .corem/psk-kek
	COREM_PSK_KEK_FILE=.corem/psk-kek $(VENV)/bin/corem-ingress serve --config $(CONFIG)

# Install everything (compiling the hot modules), then run lint, type checks and the whole
# test suite on the compiled build.
test: setup compile
	$(VENV)/bin/ruff check corem_ingress tests bench setup.py
	$(VENV)/bin/ruff format --check corem_ingress tests bench setup.py
	$(VENV)/bin/mypy corem_ingress
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile

# The whole test suite again on the pure-Python build (COREM_PURE=1: the .py of every
# compiled module); CI runs `make test` then this.
test-pure: setup
	COREM_PURE=1 $(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile

# The pure tests only: no redis-server, no network peer (about a minute).
test-unit: setup
	$(VENV)/bin/pytest -q -m unit

lint:
	$(VENV)/bin/ruff check corem_ingress tests bench setup.py
	$(VENV)/bin/ruff format --check corem_ingress tests bench setup.py

typecheck:
	$(VENV)/bin/mypy corem_ingress

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf .corem .pytest_cache .mypy_cache .ruff_cache
