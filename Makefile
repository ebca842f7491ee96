# The two commands a newcomer needs: `make demo` and `make test`.
# Each creates .venv when missing and installs the project with its pinned dependencies
# (all pins live in pyproject.toml). The stamp file makes a second run with nothing
# changed skip the install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean chromium peers

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m visionlab demo

test: $(STAMP) chromium
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The web app's browser test drives Debian's Chromium through Playwright (Playwright's own
# browser download needs a network these machines lack): installed where missing, as root.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "warning: chromium is missing and this is not root: the browser test is skipped" \
	      "(sudo apt-get install chromium)"; \
	  fi; }

# `visionlab bench lineage`'s peer row: Ultralytics YOLO (AGPL; pinned in pyproject.toml's
# `peers` group), in an environment of its own that visionlab never imports. Its
# opencv-python must not replace .venv's opencv-contrib (selective search), so it gets
# .venv-peers; a .pth file appends .venv's site-packages AFTER its own, so torch is shared
# (not a second 5.5 GB copy) while its own cv2 wins.
PEERS := .venv-peers
PEERS_STAMP := $(PEERS)/.installed

$(PEERS)/bin/python:
	$(PYTHON) -m venv $(PEERS)

$(PEERS_STAMP): pyproject.toml $(STAMP) | $(PEERS)/bin/python
	echo '*' > $(PEERS)/.gitignore
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
	  "$$($(PEERS)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/visionlab_venv.pth"
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet $$($(PEERS)/bin/python -c "import tomllib; \
	  print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['peers'])")
	YOLO_CONFIG_DIR=$(PEERS)/.config YOLO_OFFLINE=1 $(PEERS)/bin/python -c "import ultralytics, torch; print('ultralytics', ultralytics.__version__, 'torch', torch.__version__)"
	touch $(PEERS_STAMP)

peers: $(PEERS_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m visionlab bench all

clean:
	rm -rf $(VENV) runs .pytest_cache
