# Everything the tests and the demo need, from python3, git and make alone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install demo test clean

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/sdlc demo

test: install
	$(BIN)/python -m pytest -q

clean:
	-$(BIN)/sdlc server stop
	rm -rf $(VENV) .sdlc build *.egg-info
