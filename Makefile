# Set-up and entry points. Each target creates .venv once (idempotent) and reuses it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# OpenMP threads that spin while a vCPU is descheduled slow small ops 10-50x; sleep instead.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: install demo test test-pretrained lint bench gpu-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev,plot,text,pretrained,qlora]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sequencematch demo --out runs/demo --overwrite

test: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard bench experiments)
	$(BIN)/ruff format --check src tests $(wildcard bench experiments)
	$(BIN)/python -m pytest -q

test-pretrained: $(STAMP)
	SEQUENCEMATCH_TEST_PRETRAINED=1 $(BIN)/python -m pytest -q -rs -m pretrained

bench: $(STAMP)
	$(BIN)/python -m bench.layout_overhead
	$(BIN)/python -m bench.generate_speed
	$(BIN)/python -m bench.train_step
	$(BIN)/python -m bench.pretrained_train
	$(BIN)/python -m bench.pretrained_generate
	$(BIN)/python -m bench.pretrained_memory

gpu-check: $(STAMP)
	$(BIN)/python -m bench.gpu_check

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
