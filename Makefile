# Everything the tests and the demo need, from python3, git and make alone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The pinned agent CLIs the tests run for real: Claude Code, Codex, Gemini CLI and OpenCode from npm
# (tools/package-lock.json), Aider from PyPI in a virtual environment of its own (tools/aider).
TOOLS_STAMP := tools/node_modules/.installed-stamp
CLAUDE_BIN  := tools/node_modules/.bin/claude
AIDER_VENV  := tools/aider
AIDER_STAMP := $(AIDER_VENV)/.installed-stamp
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# Playwright drives Debian's Chromium; it never downloads a browser of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1
CHROMIUM := /usr/bin/chromium
# PostgreSQL's server programs (tests/test_postgres.py starts a private cluster with them).
PG_INITDB := $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb))
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get
# The agents' sandbox (issue 13): bubblewrap, pasta for its outbound network, ip for its namespace.
SANDBOX_MISSING := $(if $(wildcard /usr/bin/bwrap),,bubblewrap) $(if $(wildcard /usr/bin/pasta),,passt) \
	$(if $(wildcard /usr/sbin/ip /usr/bin/ip /sbin/ip /bin/ip),,iproute2)
SANDBOX_MISSING := $(strip $(SANDBOX_MISSING))

.PHONY: install demo test lint clean tools-missing system-packages

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Reinstalled when the lock file is newer than the stamp or the binary has gone.
$(TOOLS_STAMP): tools/package-lock.json tools/package.json $(if $(wildcard $(CLAUDE_BIN)),,tools-missing)
	npm ci --prefix tools --no-audit --no-fund
	$(CLAUDE_BIN) --version
	tools/node_modules/.bin/codex --version
	tools/node_modules/.bin/gemini --version
	tools/node_modules/opencode-linux-x64/bin/opencode --version
	touch $@

# Aider's dependencies never touch sdlc's: its own venv, every package pinned.
$(AIDER_STAMP): tools/aider-requirements.lock
	rm -rf $(AIDER_VENV)
	$(PYTHON) -m venv $(AIDER_VENV)
	$(AIDER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AIDER_VENV)/bin/python -m pip install --quiet --no-deps -r tools/aider-requirements.lock
	$(AIDER_VENV)/bin/aider --version
	touch $@

tools-missing:

# Debian packages the tests need, installed only when missing (needs root, as on CI).
system-packages:
ifeq ($(wildcard $(CHROMIUM)),)
	$(APT_GET) update -q
	$(APT_GET) install -y -q chromium
endif
ifeq ($(PG_INITDB),)
	$(APT_GET) update -q
	$(APT_GET) install -y -q postgresql
endif
ifneq ($(SANDBOX_MISSING),)
	$(APT_GET) update -q
	$(APT_GET) install -y -q $(SANDBOX_MISSING)
endif

install: system-packages $(STAMP) $(TOOLS_STAMP) $(AIDER_STAMP)

demo: $(STAMP)
	$(BIN)/sdlc demo

# The code sdlc runs: flows, tasks, blocks, the core, the entry points and the demo (tests are not linted).
LINTED := flows tasks blocks sdlc entrypoints demo deployments

# ruff (lint and format) and mypy, pinned in requirements.lock; configured in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

# Two test processes, each with its own Prefect server: much of a test's time is spent waiting (for a
# flow run to end, a poll, a subprocess), which the other process fills. The heaviest tests share one
# xdist group, so they run one after another instead of starving each other of the two cores.
# build/test-times.xml keeps every test's duration (where the suite's time goes).
test: install lint
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=20 --junitxml=build/test-times.xml

clean:
	-$(BIN)/sdlc server stop
	rm -rf $(VENV) .sdlc build *.egg-info
