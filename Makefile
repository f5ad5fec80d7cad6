# sympathy: the two commands are `make demo` and `make test` (see README.md).
VENV      := $(CURDIR)/.venv
BIN       := target/release/sympathy
PROMPT    := def squares(n): return [x**2 for x in$(EMPTY) $(EMPTY)
EMPTY     :=
# The demo's run stops on quality or on time, whichever comes first, annealed either
# way: the small preset's 14-minute budget, or an evaluation at 1.75 bits/char, after
# which the rate decays for 3/7 of the run so far (README, "Stopping on quality").
DEMO_TARGET := --target-bpb 1.75
# One data-parallel worker per core this process may use (`nproc` honours taskset): for
# the small model that is faster than libtorch's intra-op threads (docs/performance.md).
# `make demo WORKERS=1` trains with intra-op threads instead.
WORKERS ?= $(shell nproc)
# Extra flags for the demo's training run, e.g. `make demo DEMO_FLAGS='--max-steps 50'`.
DEMO_FLAGS ?=
RUN       := runs/default

# torch-sys and build.rs take libtorch from the venv's torch package (found without
# importing it: the CPU-only install cannot `import torch`); build.rs embeds the rpath.
export LIBTORCH = $(shell [ -x $(VENV)/bin/python ] && $(VENV)/bin/python -c "import importlib.util as u; print(u.find_spec('torch').submodule_search_locations[0])")
export LIBTORCH_CXX11_ABI := 1
export PATH := $(VENV)/bin:$(PATH)

.PHONY: demo test build libtorch-early-crates early-crates libtorch libtorch-full lint fixtures bench clean

demo: build
	@if [ -f $(RUN)/ckpt-latest/state.json ]; then \
	    $(BIN) train --out $(RUN) --resume --workers $(WORKERS) $(DEMO_FLAGS); \
	else \
	    $(BIN) train --out $(RUN) $(DEMO_TARGET) --workers $(WORKERS) $(DEMO_FLAGS); \
	fi
	@printf '%s' '$(PROMPT)'
	@$(BIN) generate --checkpoint $(RUN) --temperature 0 --max-tokens 60 --prompt '$(PROMPT)'

test: libtorch-full
	cargo test --release -- --test-threads=1

# libtorch downloads while every crate that does not need it compiles (the install is
# mostly waiting on the network): `early-crates` builds all it can with --keep-going,
# and torch-sys, which needs libtorch, fails there on purpose (log in .cache/). Then the
# rest: torch-sys, tch and sympathy.
build: libtorch-early-crates
	cargo build --release

# A target of its own, so that `build` reads LIBTORCH once libtorch is there.
libtorch-early-crates:
	@$(MAKE) --no-print-directory -j2 libtorch early-crates

# Only on a first install: later, pointing LIBTORCH elsewhere would rebuild torch-sys.
FIRST_INSTALL := $(if $(wildcard $(VENV)/bin/python),,yes)
early-crates:
ifeq ($(FIRST_INSTALL),yes)
	@mkdir -p .cache
	@LIBTORCH=/nonexistent cargo build --release --keep-going >.cache/early-crates.log 2>&1 || true
endif

libtorch:
	@bash scripts/setup_libtorch.sh

# The tests and scripts that run PyTorch itself need what Python's `import torch` loads.
libtorch-full:
	@bash scripts/setup_libtorch.sh --full

lint: libtorch
	cargo fmt --check
	cargo clippy --release --all-targets -- -D warnings
	RUSTDOCFLAGS='-D warnings' cargo doc --release --no-deps

fixtures: libtorch-full
	$(VENV)/bin/python scripts/make_fixtures.py

clean:
	cargo clean
