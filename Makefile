# sympathy: the two commands are `make demo` and `make test` (see README.md).
VENV      := $(CURDIR)/.venv
BIN       := target/release/sympathy
PROMPT    := def squares(n): return [x**2 for x in$(EMPTY) $(EMPTY)
EMPTY     :=
# Extra flags for the demo's training run, e.g. `make demo DEMO_FLAGS='--max-steps 50'`.
DEMO_FLAGS ?=
RUN       := runs/default

# torch-sys asks the venv's python where libtorch lives; build.rs embeds the rpath.
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(VENV)/bin:$(PATH)

.PHONY: demo test build libtorch lint fixtures bench clean

demo: build
	@if [ -f $(RUN)/ckpt-latest/state.json ]; then \
	    $(BIN) train --out $(RUN) --resume $(DEMO_FLAGS); \
	else \
	    $(BIN) train --out $(RUN) $(DEMO_FLAGS); \
	fi
	@printf '%s' '$(PROMPT)'
	@$(BIN) generate --checkpoint $(RUN) --temperature 0 --max-tokens 60 --prompt '$(PROMPT)'

test: libtorch
	cargo test --release -- --test-threads=1

build: libtorch
	cargo build --release

libtorch:
	@bash scripts/setup_libtorch.sh

lint: libtorch
	cargo fmt --check
	cargo clippy --release --all-targets -- -D warnings

fixtures: libtorch
	$(VENV)/bin/python scripts/make_fixtures.py

clean:
	cargo clean
