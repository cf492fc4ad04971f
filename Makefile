# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test venv clean-venv system-packages

venv: $(STAMP)

# Each install step writes its output to $(INSTALL_LOG); the log is shown only when a step fails, so that a
# clean install prints one line instead of pages of pip and setuptools notices.
INSTALL_LOG = $(VENV)/install.log
# setuptools < 81: face_recognition_models imports pkg_resources; >= 77 reads the SPDX licence string.
SETUPTOOLS := setuptools>=77,<81
PIP_INSTALL = $(BIN)/python -m pip install --disable-pip-version-check --no-input --progress-bar off
logged = $(1) >>$(INSTALL_LOG) 2>&1 || { \
	echo "error: installing into $(VENV) failed at: $(1)" >&2; \
	echo "--- last lines of $(INSTALL_LOG) ---" >&2; tail -n 60 $(INSTALL_LOG) >&2; exit 1; }

# torch goes in first and pinned: a looser requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@echo "Installing faceprompt and its dependencies into $(VENV) (a few minutes; log: $(INSTALL_LOG))"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@: > $(INSTALL_LOG)
	@$(call logged,$(PIP_INSTALL) --upgrade pip '$(SETUPTOOLS)' wheel)
	@$(call logged,$(PIP_INSTALL) torch==2.13.0)
	@$(call logged,$(PIP_INSTALL) -e '.[dev]')
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/faceprompt demo --out demo-output

# The service's tests drive Debian's chromium (the web page) and start Debian's PostgreSQL (workers on a shared
# store): installed once when missing, as root (through sudo otherwise).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
system-packages:
	@if ! command -v chromium >/dev/null || ! test -d /usr/lib/postgresql; then \
		echo "Installing chromium, chromium-driver and postgresql (apt-get)"; \
		{ $(SUDO) apt-get update -q && \
		  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver postgresql; \
		} >$(VENV)/apt.log 2>&1 || { echo "error: apt-get failed; last lines of $(VENV)/apt.log:" >&2; \
		  tail -n 30 $(VENV)/apt.log >&2; exit 1; }; \
	fi

test: $(STAMP) system-packages
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
