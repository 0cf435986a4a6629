# sage-opd — on a fresh machine `make round` and `make test` are the only commands you need:
# each target depends on the set-up it uses.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.yaml
RUN ?=
ROUND ?=
ARGS ?=
TORCH_VERSION := 2.13.0
STAMP := $(VENV)/.installed-stamp
MODELS := data/models/tiny-student/config.json

# Use the full ALFWorld data when it has been unpacked here and nothing else was configured.
ifneq ($(wildcard data/alfworld/json_2.1.1),)
export ALFWORLD_DATA ?= $(CURDIR)/data/alfworld
endif
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

STAGE_ARGS = --config $(CONFIG) $(if $(RUN),--run $(RUN)) $(if $(ROUND),--round $(ROUND)) $(ARGS)

.PHONY: setup prepare test round rollout annotate train eval inspect bench clean-runs

setup: $(STAMP)

# CPU torch first: an unpinned torch would pull several GB of CUDA packages.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e ".[alfworld,dev]"
	touch $@

prepare: $(MODELS)

$(MODELS): $(STAMP)
	$(BIN)/sage-opd prepare --config $(CONFIG)

# pytest exits 5 when it collected no test: that is a failure here, never a silent pass.
test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The next round of the run: rollout -> annotate -> train -> eval, one line in rounds.jsonl.
round: prepare
	$(BIN)/sage-opd round --config $(CONFIG) $(if $(RUN),--run $(RUN)) $(ARGS)

rollout: prepare
	$(BIN)/sage-opd rollout $(STAGE_ARGS)

annotate: prepare
	$(BIN)/sage-opd annotate $(STAGE_ARGS)

train: prepare
	$(BIN)/sage-opd train $(STAGE_ARGS)

eval: prepare
	$(BIN)/sage-opd eval $(STAGE_ARGS)

inspect: setup
	$(BIN)/sage-opd inspect $(STAGE_ARGS)

bench: prepare
	$(BIN)/python -m bench $(ARGS)

clean-runs:
	rm -rf data/runs
