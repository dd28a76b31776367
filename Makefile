PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv test demo lint bench clean

$(BIN)/graphsurg: pyproject.toml constraints-cpu.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints-cpu.txt -e '.[train,dev]'
	touch $@

venv: $(BIN)/graphsurg

test: venv
	$(BIN)/python -m pytest -q

demo: venv
	$(BIN)/graphsurg run

lint: venv
	$(BIN)/ruff check graphsurg passes tests bench models

clean:
	rm -rf $(VENV) build *.egg-info
