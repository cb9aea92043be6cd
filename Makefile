# Umbra: the two commands a newcomer needs are `make test` and `make demo`.
# GNU make.  Recipes are indented with tabs.

VENV ?= .venv
PY = $(VENV)/bin/python
PYTHON ?= python3
PYTEST_ARGS ?=
ARGS ?=
SRC = node ground hil firmware_sim

.DEFAULT_GOAL := help

.PHONY: help install demo system-deps mosquitto ground-deps firmware-deps firmware labgrid openmct test check bench clean

# Playwright drives Debian's chromium (ground-deps); it must never fetch a browser itself.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

help:
	@echo "make install     create $(VENV) (if missing) and pip install -e '.[dev]'"
	@echo "make test        run the test suite (PYTEST_ARGS=... to pass options to pytest)"
	@echo "make demo        run the HIL demo bench (ARGS=... to pass options)"
	@echo "make check       ruff and mypy on $(SRC)"
	@echo "make bench       run the benchmarks"
	@echo "make system-deps make sure every Debian package the tests need is installed (one apt-get)"
	@echo "make mosquitto   make sure the mosquitto broker is installed"
	@echo "make ground-deps make sure chromium and postgresql (ground tests) are installed"
	@echo "make firmware    build the C board firmware (QEMU mps2-an385, NUCLEO-F401RE, host)"
	@echo "make labgrid     install labgrid (in $(LABGRID_VENV)) and ser2net, for benches on labgrid places"
	@echo "make openmct     install NASA Open MCT (npm, pinned) for the console's /openmct"
	@echo "make clean       remove caches (keeps $(VENV))"

# The stamp is newer than pyproject.toml once its dependencies are installed.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	@# Compile the numba kernels into their cache now, not at the first control step.
	$(PY) -c "from node.control.law import warm_up; warm_up(); \
		from firmware_sim.spaceplant import SpacePlant; SpacePlant().step(0.1); \
		from firmware_sim.plant import FirstOrderPlant; FirstOrderPlant().step(0.1)"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	@$(MAKE) --no-print-directory openmct || echo "(Open MCT not installed: the console's /openmct page says how)"
	$(VENV)/bin/umbra-hil demo $(ARGS)

# $(call need-debs,PACKAGE:PROBE[,PROBE] ...): make sure Debian packages are there.  A probe
# is a command (on PATH or in /usr/sbin) or an absolute path (a glob may stand in it) that
# exists once the package is in; what is missing is installed with one apt-get (as root),
# or named with the command to run.  System services the packages start are left alone:
# they are not ours (the tests start their own mosquitto and PostgreSQL).
define need-debs
@missing=""; \
for pair in $(1); do \
	pkg=$${pair%%:*}; found=""; \
	for probe in $$(echo "$${pair#*:}" | tr , ' '); do \
		case $$probe in \
			/*) test -e "$$probe" && found=1 ;; \
			*) { command -v "$$probe" >/dev/null 2>&1 || test -x "/usr/sbin/$$probe"; } && found=1 ;; \
		esac; \
	done; \
	test -n "$$found" || missing="$$missing $$pkg"; \
done; \
if [ -z "$$missing" ]; then \
	echo "found: $(strip $(foreach p,$(1),$(firstword $(subst :, ,$(p)))))"; \
elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	echo "installing with apt-get:$$missing"; \
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
else \
	echo "missing:$$missing; run: sudo apt-get install$$missing" >&2; \
	exit 1; \
fi
endef

# The broker the bus tests start on a free port.
MOSQUITTO_DEBS = mosquitto:mosquitto
# The ground tests: a browser (console and Open MCT tests, Playwright) and PostgreSQL's
# binaries (fleet tests; they make their own cluster with initdb).
GROUND_DEBS = chromium:chromium postgresql:/usr/lib/postgresql/*/bin/initdb,initdb
# The C reference firmware (firmware/, docs/real-boards.md): the Arm cross compiler with
# picolibc for both targets, QEMU for the mps2-an385 board, the host compiler (with its
# AddressSanitizer) for the codec tests and the firmware on a pty.
FIRMWARE_DEBS = gcc-arm-none-eabi:arm-none-eabi-gcc \
	picolibc-arm-none-eabi:/usr/lib/picolibc/arm-none-eabi/picolibc.specs qemu-system-arm:qemu-system-arm gcc:gcc
# labgrid's exporter serves serial ports with ser2net.
LABGRID_DEBS = ser2net:ser2net
# npm installs Open MCT.
OPENMCT_DEBS = nodejs:node npm:npm

mosquitto:
	$(call need-debs,$(MOSQUITTO_DEBS))

ground-deps:
	$(call need-debs,$(GROUND_DEBS))

firmware-deps:
	$(call need-debs,$(FIRMWARE_DEBS))

# Everything `make test` needs from Debian, in one apt-get (one package index update).
system-deps:
	$(call need-debs,$(MOSQUITTO_DEBS) $(GROUND_DEBS) $(FIRMWARE_DEBS) $(LABGRID_DEBS) $(OPENMCT_DEBS))

# labgrid (hil/labgrid.py, docs/real-boards.md §9) in an environment of its own: it pins
# pyserial-labgrid, a fork that installs over pyserial's files, which the node relies on.
# The harness runs its labgrid-client; the tests also run its coordinator and exporter, and
# the exporter runs Debian's ser2net.
LABGRID_VENV ?= .venv-labgrid
LABGRID_VERSION ?= 26.0.1
$(LABGRID_VENV)/.installed:
	test -x $(LABGRID_VENV)/bin/python || $(PYTHON) -m venv $(LABGRID_VENV)
	$(LABGRID_VENV)/bin/python -m pip install --quiet 'labgrid==$(LABGRID_VERSION)'
	touch $@

labgrid: $(LABGRID_VENV)/.installed
	$(call need-debs,$(LABGRID_DEBS))

# NASA Open MCT for the ground console (ground/web/openmct.py): the npm package pinned by
# ground/web/openmct/package-lock.json, installed beside the console, never fetched at run time.
OPENMCT_DIR = ground/web/openmct
$(OPENMCT_DIR)/node_modules/openmct/dist/openmct.js: $(OPENMCT_DIR)/package.json $(OPENMCT_DIR)/package-lock.json
	$(call need-debs,$(OPENMCT_DEBS))
	cd $(OPENMCT_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

openmct: $(OPENMCT_DIR)/node_modules/openmct/dist/openmct.js

firmware: firmware-deps
	$(MAKE) -C firmware all
	$(MAKE) -C firmware size

# Second pass: the numba kernels again with the JIT off, so coverage sees inside them.
# pytest exits 5 when nothing is collected, which only means no `kernels` tests yet.
test: system-deps $(VENV)/.installed mosquitto ground-deps firmware labgrid openmct
	$(PY) -m pytest -q $(PYTEST_ARGS)
	@rc=0; NUMBA_DISABLE_JIT=1 $(PY) -m pytest -q $(PYTEST_ARGS) -m kernels || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests marked 'kernels': NUMBA_DISABLE_JIT pass skipped"; rc=0; fi; \
	exit $$rc

check: $(VENV)/.installed
	$(PY) -m ruff check $(SRC)
	$(PY) -m mypy $(SRC)

bench: $(VENV)/.installed
	$(PY) -m bench.run

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage htmlcov
	find . -path ./.git -prune -o -path './$(VENV)' -prune -o \
		-type d -name __pycache__ -prune -exec rm -rf {} +
