# Everything the tests and the demo need, from python3, git and make alone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The pinned Claude Code CLI the tests run for real (tools/package-lock.json).
TOOLS_STAMP := tools/node_modules/.installed-stamp
CLAUDE_BIN  := tools/node_modules/.bin/claude
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install demo test clean tools-missing

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
	touch $@

tools-missing:

install: $(STAMP) $(TOOLS_STAMP)

demo: $(STAMP)
	$(BIN)/sdlc demo

test: install
	$(BIN)/python -m pytest -q

clean:
	-$(BIN)/sdlc server stop
	rm -rf $(VENV) .sdlc build *.egg-info
