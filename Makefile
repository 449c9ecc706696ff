# Thin wrappers: every target calls a Python entry point of the package.
PY      ?= .venv/bin/python
# Every target that runs $(PY) first (re)makes the environment when it is missing or older than setup.cfg,
# so on a fresh clone `make demo` or `make test` is the whole set-up. The stamp is the `mvlm` script that
# the install writes (touched last; deleted when a step fails). With another PY nothing is installed.
ENV     := $(if $(filter .venv/bin/python,$(PY)),.venv/bin/mvlm)
PYTEST_ARGS ?=
# pytest-xdist processes; PYTEST_WORKERS=0 runs the tests serially
PYTEST_WORKERS ?= 2

SIZE    ?= tiny
STAGE   ?= 1
WORKDIR ?= runs/$@-$(SIZE)
ARGS    ?=

MESH    ?= data=1,fsdp=8,tensor=1
TYPE    ?= q4_k_s

.PHONY: install test bench clean pretrain sft vlm plan demo export sweep
.DELETE_ON_ERROR:

# `make install` always reinstalls; the other targets only when the stamp is missing or stale.
install:
	@$(MAKE) --no-print-directory --always-make .venv/bin/mvlm

.venv/bin/mvlm: setup.cfg pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	.venv/bin/pip install --quiet -e '.[test,eval]'
	.venv/bin/python -m mvlm_jax.eval.lm_plugin   # `lm_eval --model mvlm_jax` (lm-eval reads no entry points)
	touch $@

test: $(ENV)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --durations=15 $(PYTEST_ARGS)

bench: $(ENV)
	$(PY) -m bench.convert_memory --size 2.7b
	$(PY) -m bench.restore --size 2.7b --dtype bfloat16
	$(PY) -m bench.data_throughput
	$(PY) -m bench.tokenize_throughput
	$(PY) -m bench.packing
	$(PY) -m bench.conversation_start --samples 50000
	$(PY) -m bench.train_throughput
	$(PY) -m bench.projector_backward
	$(PY) -m bench.attention
	$(PY) -m bench.tpu_plans
	$(PY) -m bench.generate_throughput
	$(PY) -m bench.edge_latency
	$(PY) -m bench.eval_throughput
	$(PY) -m bench.rope_interpolation

pretrain: $(ENV)
	$(PY) -m mvlm_jax.train --config experiments/pretrain.py:size=$(SIZE) --workdir $(WORKDIR) $(ARGS)

sft: $(ENV)
	$(PY) -m mvlm_jax.train --config experiments/sft.py:size=$(SIZE) --workdir $(WORKDIR) $(ARGS)

vlm: $(ENV)
	$(PY) -m mvlm_jax.train --config experiments/vlm.py:size=$(SIZE),stage=$(STAGE) --workdir runs/vlm$(STAGE)-$(SIZE) $(ARGS)

demo: $(ENV)
	$(PY) -m mvlm_jax.demo --workdir runs/demo $(ARGS)

# EXP=experiments/ablations/projectors.py:demo; LAUNCHER=local|slurm. `make sweep EXP=... --dry-run` (make's
# own -n) runs the planner with --dry-run (the leading + runs the line under -n): the plan, nothing trained.
LAUNCHER ?= local
sweep: $(ENV)
	+$(PY) -m mvlm_jax.sweep $(EXP) --launcher $(LAUNCHER) $(if $(findstring n,$(firstword -$(MAKEFLAGS))),--dry-run) $(ARGS)

export: $(ENV)
	$(PY) -m mvlm_jax.export --ckpt $(CKPT) --out $(OUT) --type $(TYPE) $(ARGS)

# TOPOLOGY=v5p:4x4x4 compiles for that TPU slice with libtpu; without it, CPU devices stand in.
# CONFIG=experiments/vlm.py:size=1.4b,stage=2 plans another experiment (default: pretraining at SIZE).
plan: $(ENV)
	$(PY) -m mvlm_jax.train.plan --config $(or $(CONFIG),experiments/pretrain.py:size=$(SIZE)) --mesh $(MESH) $(if $(TOPOLOGY),--topology $(TOPOLOGY)) $(ARGS)

clean:
	rm -rf .venv build *.egg-info .pytest_cache
