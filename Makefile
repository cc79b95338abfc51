# Two entry points matter: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

SUDO   ?= $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint typecheck unit clean system-deps bench bench-deps bench-peer-deps

# Debian's python3 lacks `-m venv` (its ensurepip) until python3-venv is installed.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends python3-venv; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/authproxy demo

test: system-deps lint typecheck unit

# Servers the end-to-end tests start themselves on loopback ports (nginx, Caddy, redis-server and
# redis-sentinel, haproxy, and the Tomcat 10 and Jetty 9 servlet containers with a JDK to build their
# test webapp; the system services stay unused), wrk for the benchmark's smoke test, and the Chromium that tests/test_browser.py
# drives (Playwright's own browser download is not used).
system-deps: bench-deps
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends nginx; }
	@command -v caddy >/dev/null 2>&1 || test -x /usr/bin/caddy || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends caddy; }
	@command -v redis-server >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends redis-server; }
	@command -v redis-sentinel >/dev/null 2>&1 || test -x /usr/bin/redis-sentinel || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends redis-sentinel; }
	@test -x /usr/bin/chromium || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }
	@command -v haproxy >/dev/null 2>&1 || test -x /usr/sbin/haproxy || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends haproxy; }
	@test -d /usr/share/tomcat10/lib && test -f /usr/share/jetty9/start.jar && command -v javac >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    tomcat10 jetty9 default-jdk-headless; }

# lint-imports checks the layering contracts in pyproject.toml (docs/architecture.md, "The import rules").
lint: $(STAMP)
	$(BIN)/ruff check authproxy tests bench soak
	$(BIN)/ruff format --check authproxy tests bench soak
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

# The benchmark (bench/README.md): about 10 minutes, writes bench/results/latest.json and the tables in
# bench/README.md. BENCH_QUICK=1 runs a shorter version into bench/results/quick.{json,md} instead;
# BENCH_BASELINE=DIR also measures authproxy from the source tree DIR (e.g. `git archive` of an older
# commit) side by side. uvloop comes from the `fast` extra, as in production; wrk and nginx from Debian.
bench: $(STAMP) bench-deps bench-peer-deps
	$(BIN)/python -m pip install --quiet -e '.[dev,fast]'
	$(BIN)/python -m bench --mode $(if $(BENCH_QUICK),quick,full) --tracing $(if $(BENCH_BASELINE),--baseline $(BENCH_BASELINE))

bench-deps:
	@command -v wrk >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends wrk; }
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends nginx; }

# Apache with mod_auth_openidc is the benchmark's peer (not needed by `make test`): the harness runs its
# own apache2 processes with their own config on loopback ports; the system service stays unused.
bench-peer-deps:
	@{ command -v apache2 >/dev/null 2>&1 || test -x /usr/sbin/apache2; } && \
	  test -f /usr/lib/apache2/modules/mod_auth_openidc.so || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    apache2 libapache2-mod-auth-openidc; }

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# Minutes of `authproxy serve` under a realistic mix with injected CentralAuth faults; not part of
# `make test`. SOAK_SECONDS (default 600) sets the length; soak/README.md explains the report.
.PHONY: soak
soak: $(STAMP)
	$(BIN)/python soak/soak.py
