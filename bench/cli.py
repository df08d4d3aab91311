"""The ``bench`` command: a thin front door over the engine.

Each command imports the engine parts it uses inside its function: ``bench --help``,
``bench gate`` or ``bench report`` then never pay for importing torch, which only the
commands that run cases (and the workload registry) need."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench import exit_codes
from bench.errors import BenchInputError
from bench.extras import require
from bench.spec.builtin import builtin_suites_dir, listed_suites, resolve_suite
from bench.spec.expand import parse_select

DEFAULT_SUITES_DIR = Path("suites")
SUITE_HELP = "a suite file (TOML), or a suite's name: quick is ./suites/quick.toml, else " \
             "the built-in one (bench list shows them)"


def cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from bench.modes import get_mode, mode_names
    from bench.orchestrate.plan import plan_suite
    from bench.spec import load_suite
    from bench.workloads import get_workload, workload_names

    if args.suite is None:
        suites = listed_suites()
        rows = []
        builtin = builtin_suites_dir()
        for path in suites:
            suite = load_suite(path)
            planned = plan_suite(suite)
            runnable = sum(1 for p in planned if not p.skip_reason)
            shown = f"{path.stem} (built-in)" if path.parent == builtin else str(path)
            rows.append([shown, len(planned), runnable, suite.description])
        print(tabulate(rows, headers=["suite", "cases", "runnable here", "description"]))
        print()
        rows = [[n, ", ".join(get_workload(n).phases), get_workload(n).description]
                for n in workload_names()]
        print(tabulate(rows, headers=["workload", "phases", "description"]))
        print()
        rows = [[n, get_mode(n).description] for n in mode_names()]
        print(tabulate(rows, headers=["mode", "description (a benchmark's mode = ...; none "
                                              "named: picked by the case's shape)"]))
        return 0
    suite = load_suite(args.suite)
    planned = plan_suite(suite, parse_select(args.select))
    rows = [[p.case_id, "skipped: " + p.skip_reason if p.skip_reason else "runnable"]
            for p in planned]
    print(f"{suite.name}: {len(planned)} cases")
    print(tabulate(rows, headers=["case", "here"]))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bench.orchestrate.sweep import run_suite
    from bench.reports.table import render_report

    out = Path(args.out) if args.out else Path("results") / f"{Path(args.suite).stem}.json"
    if args.paired_rounds is not None and (args.paired_rounds < 0 or args.paired_rounds == 1):
        raise BenchInputError("--paired-rounds", f"{args.paired_rounds} rounds give no CI",
                              valid="0 (off) or an integer >= 2")
    if args.retry_contended < 0:
        raise BenchInputError("--retry-contended", f"{args.retry_contended} reruns",
                              valid="an integer >= 0")
    from bench.spec.shards import parse_shard

    store = run_suite(args.suite, out, resume=args.resume, overwrite=args.overwrite,
                      select=parse_select(args.select), progress=not args.no_progress,
                      paired_rounds=args.paired_rounds, shard=parse_shard(args.shard),
                      executor=args.executor, ray_address=args.ray_address,
                      host_probe=args.host_probe, retry_contended=args.retry_contended)
    if not args.quiet:
        print(render_report(store.record, "github"))
    print(f"results written to {out}", file=sys.stderr)
    return run_exit_code(store.record, args.allow_missed_targets)


def run_exit_code(record: Any, allow_missed_targets: bool = False) -> int:
    """bench run's exit code, with its reasons on stderr (bench.exit_codes): 1 for a case
    that failed or diverged and, unless ``allow_missed_targets``, for a missed accuracy
    target, SLO or time-to-accuracy target (not_converged)."""
    from bench.reports.slo import slo_failures
    from bench.results.schema import FAILED_STATUSES, STATUS_DIVERGED, STATUS_NOT_CONVERGED

    total = len(record.cases)
    failed = Counter(c.status for c in record.cases
                     if c.status in FAILED_STATUSES | {STATUS_DIVERGED})
    reasons = [f"{sum(failed.values())} of {total} cases failed ("
               + ", ".join(f"{n} {status}" for status, n in sorted(failed.items())) + ")"
               ] if failed else []
    missed = []
    if not allow_missed_targets:
        not_converged = sum(c.status == STATUS_NOT_CONVERGED for c in record.cases)
        accuracy = sum(c.measured and c.accuracy is not None and c.accuracy.passed is False
                       for c in record.cases)
        slo = sum(bool(misses) for misses in slo_failures(record.cases).values())
        missed = [f"{n} of {total} cases {text}" for n, text in (
            (not_converged, "did not reach their time-to-accuracy target (not_converged)"),
            (accuracy, "missed an accuracy target"), (slo, "missed an SLO")) if n]
    if not reasons and not missed:
        return exit_codes.OK
    hint = " (--allow-missed-targets: figures only)" if missed else ""
    print(f"bench run: {'; '.join(reasons + missed)}: exit {exit_codes.FAILED}{hint}",
          file=sys.stderr)
    return exit_codes.FAILED


STARTER_SUITE = """\
# A starter suite for {factory}: bench run {out}
# Every case runs in its own worker; the figures are median step time with a 95% CI,
# throughput, latency percentiles, memory, and fidelity to the fp32 eager model (or your
# UserModel.evaluate metric) with parity. Trim or widen the matrix as you need.
[suite]
name = "{name}"

[budget]
min_trials = 5       # independent trials per case (at least 4: the gate needs them)
max_time_s = 5.0     # stop adding trials after this long
timeout_s = 600      # a case past this is killed and recorded as a timeout

[[benchmark]]
model = "{factory}"
python_path = "{python_path}"   # the folder holding the module, from this file

[benchmark.matrix]
precision = ["fp32", "bf16"]
backend = ["eager", "onnxruntime"]          # also: compile
quantization = ["none", "int8_dynamic"]     # also: int8_static
batch_size = [1, 32]
# Combinations that can never run: int8 starts from the fp32 model, the ONNX export is fp32.
exclude = [
    {{ precision = "bf16", quantization = "int8_dynamic" }},
    {{ precision = "bf16", backend = "onnxruntime" }},
]
"""


def _suite_case_ids(record) -> list[str] | None:  # noqa: ANN001 - a RunRecord
    """The case ids of the suite a shard file was run from, where that file is here
    unchanged (the same hash): they name the cases of a missing shard."""
    from bench.spec import expand_suite, load_suite

    path = Path(record.run.suite_path)
    if not path.is_file():
        return None
    try:
        suite = load_suite(path)
    except BenchInputError:
        return None
    if suite.sha256 != record.run.suite_sha256:
        return None
    select = {k: set(v) for k, v in record.run.selection.items()}
    return [case.case_id for case in expand_suite(suite, select or None)]


def cmd_merge(args: argparse.Namespace) -> int:
    from bench.reports.shards import merge_shards
    from bench.results.store import load_run, write_atomically

    records = [load_run(path) for path in args.shards]
    merged = merge_shards(args.shards, records,
                          allow_different_machines=args.allow_different_machines,
                          expected_ids=_suite_case_ids(records[0]) if records else None)
    for line in merged.problems():
        print(f"bench merge: {line}", file=sys.stderr)
    if merged.complete or args.partial:
        write_atomically(Path(args.out), merged.record.to_dict(), "--out")
        print(f"merged {len(records)} shard files, {len(merged.record.cases)} cases, into "
              f"{args.out}", file=sys.stderr)
    if not merged.complete:
        print("bench merge: incomplete" + ("" if args.partial else f"; {args.out} not "
              "written (--partial writes it anyway)") + ": exit 1", file=sys.stderr)
        return 1
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from bench.files import write_text_atomically

    module = args.factory.partition(":")[0]
    out = Path(args.out) if args.out else DEFAULT_SUITES_DIR / f"{module.rpartition('.')[2]}.toml"
    if out.exists():
        raise BenchInputError(str(out), "exists; choose another --out or remove it")
    folder = Path(args.python_path or ".").resolve()
    python_path = os.path.relpath(folder, out.resolve().parent)
    text = STARTER_SUITE.format(factory=args.factory, out=out, name=out.stem,
                                python_path=python_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out, text, "--out")
    from bench.spec import load_suite

    try:
        load_suite(out)  # the factory must be findable: say so now, in one line, if not
    except BenchInputError:
        out.unlink()
        raise
    print(f"wrote {out}; run it with: bench run {out}")
    return 0


def _selected(record, args: argparse.Namespace):  # noqa: ANN001, ANN202 - a RunRecord
    from bench.results.selection import select_cases

    (record,) = select_cases([record], parse_select(args.select), [args.run])
    return record


def cmd_report(args: argparse.Namespace) -> int:
    from bench.reports.table import render_report
    from bench.results.store import load_run

    if args.html and args.format is not None:
        raise BenchInputError("--html", f"and --format {args.format} both choose the output",
                              valid="--html FILE (one HTML file with plots), or --format")
    record = _selected(load_run(args.run), args)
    if args.html:
        from bench.files import write_text_atomically
        from bench.reports.html import render_html

        require("html", "--html")
        write_text_atomically(Path(args.html), render_html(record), "--html")
        print(f"wrote {args.html}", file=sys.stderr)
        return 0
    _emit(render_report(record, args.format or "github"), args.out)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from bench.reports.show import find_case, render_case, render_run
    from bench.results.store import load_run

    record = _selected(load_run(args.run), args)
    if args.case is None:
        print(render_run(record), end="")
    else:
        print(render_case(record, find_case(record, args.case, args.run)), end="")
    return exit_codes.OK


def cmd_max_batch(args: argparse.Namespace) -> int:
    import dataclasses

    from tabulate import tabulate

    from bench.orchestrate.max_batch import max_batch_for_case, parse_latency_bound
    from bench.orchestrate.plan import plan_suite
    from bench.spec import load_suite

    latency = parse_latency_bound(args.latency) if args.latency else None
    suite = load_suite(args.suite)
    planned = [p for p in plan_suite(suite, parse_select(args.select)) if not p.skip_reason]
    if not planned:
        raise BenchInputError(args.suite, "no runnable case here", key="--select")
    if latency is not None and latency.figure != "step" and \
            (other := next((p.spec for p in planned if p.spec.phase != "generate"), None)):
        raise BenchInputError("--latency", f"{latency} bounds a text-generation figure, but "
                              f"{other.case_id} does not generate text", key="--latency",
                              valid="p50_ms, p90_ms or p99_ms for it")
    rows, records = [], []
    generating = any(p.spec.phase == "generate" for p in planned)
    for plan in planned:
        found = max_batch_for_case(plan.spec, ceiling=args.ceiling, latency=latency)
        at_max = found.at_max
        row = [found.case_id, found.max_batch, found.first_oom]
        if latency is not None:
            row += [found.first_over_latency,
                    f"{at_max.latency_ms:.3g}" if at_max and at_max.latency_ms else ""]
        if generating:
            axes = plan.spec.axes
            row += [int(axes.get("input_tokens", 0)) + int(axes.get("output_tokens", 0))
                    if "input_tokens" in axes else "",
                    f"{at_max.kv_cache_mib:.4g}" if at_max and at_max.kv_cache_mib else ""]
        rows.append(row + [f"{at_max.throughput:.4g} {at_max.throughput_unit}"
                           if at_max and at_max.throughput else "",
                           f"{at_max.peak_mib:.0f}" if at_max and at_max.peak_mib else "",
                           " ".join(f"{p.batch_size}:{p.status}" for p in found.probes),
                           found.stopped or ""])
        records.append(dataclasses.asdict(found))
        if not args.no_progress:
            print(f"{found.case_id}: max batch {found.max_batch}", file=sys.stderr)
    headers = ["case (batch_size searched)", "max batch", "first OOM"]
    if latency is not None:
        headers += [f"first over {latency}", f"{latency.label} ms at max"]
    if generating:
        headers += ["context (in + out tokens)", "KV cache MiB at max"]
    if not args.quiet:
        print(tabulate(rows, headers=headers + ["throughput at max", "peak MiB at max",
                                                "probes", "stopped"]))
    if args.out:
        from bench.files import write_text_atomically

        write_text_atomically(Path(args.out), json.dumps(
            {"suite": suite.path, "searches": records}, indent=1), "--out")
    stopped = [r["case_id"] for r in records if r["stopped"]]
    if stopped:
        print(f"bench max-batch: {len(stopped)} of {len(records)} searches ended on an error, "
              f"not a limit (see 'stopped'): exit {exit_codes.FAILED}", file=sys.stderr)
        return exit_codes.FAILED
    return exit_codes.OK


def _load_pair(args: argparse.Namespace, gating: bool = False):  # noqa: ANN202
    from bench.reports.compare import fingerprint_differences
    from bench.results.selection import inherited_selection, select_cases
    from bench.results.store import load_run

    _pair_names(args)
    baseline, current = load_run(args.baseline), load_run(args.current)
    select = inherited_selection(current, parse_select(args.select))
    if current.run.selection:
        chosen = " ".join(f"{axis}={','.join(sorted(values))}"
                          for axis, values in current.run.selection.items())
        print(f"bench: {args.current} was run with --select {chosen}: the baseline's other "
              "cases are left out", file=sys.stderr)
    baseline, current = select_cases([baseline, current], select,
                                     [args.baseline, args.current])
    diffs = fingerprint_differences(baseline, current)
    if diffs and not args.allow_different_machines:
        raise BenchInputError(args.current, "measured on a different machine or stack than "
                              f"the baseline ({'; '.join(diffs)}); pass "
                              "--allow-different-machines to compare anyway")
    if gating:
        from bench.reports.gate import refuse_misleading_pair  # only where a pair is gated

        refuse_misleading_pair(args.baseline, baseline, args.current, current,
                               getattr(args, "allow_injected_slowdown", False))
    return baseline, current


def _pair_names(args: argparse.Namespace) -> None:
    """The two run files: --baseline/--current, or BASELINE CURRENT (positional)."""
    if args.pair and (args.baseline or args.current):
        raise BenchInputError("BASELINE CURRENT", "give the two run files as positional "
                              "arguments or as --baseline/--current, not both")
    if args.pair:
        if len(args.pair) != 2:
            raise BenchInputError("BASELINE CURRENT", f"expected two run files, got "
                                  f"{len(args.pair)}")
        args.baseline, args.current = args.pair
    if not (args.baseline and args.current):
        raise BenchInputError("--baseline/--current", "both run files are needed",
                              valid="--baseline OLD.json --current NEW.json, or OLD.json "
                                    "NEW.json")


def _emit(text: str, out: str | None) -> None:
    """A command's primary output: to --out when given, else to stdout."""
    if out:
        from bench.files import write_text_atomically

        write_text_atomically(Path(out), text, "--out")
        print(f"wrote {out}", file=sys.stderr)
    else:
        print(text, end="" if text.endswith("\n") else "\n")


def cmd_compare(args: argparse.Namespace) -> int:
    from bench.measurement.host_probe import describe_ratio
    from bench.reports.compare import compare_runs, comparison_json, render_comparison

    baseline, current = _load_pair(args)
    comparisons = compare_runs(baseline, current)
    if args.json:
        _emit(json.dumps(comparison_json(comparisons), indent=1), args.out)
        return 0
    text = render_comparison(comparisons, args.format)
    if host := describe_ratio(baseline.run.host_probes, current.run.host_probes):
        text += "\n" + host
    _emit(text, args.out)
    return 0


def _policy(path: str | None):  # noqa: ANN202 - bench.reports.gate.Policy
    from bench.reports.gate import Policy, load_policy

    return load_policy(path) if path else Policy()


def _gate(baseline, current, policy, baseline_name: str, current_name: str,  # noqa: ANN001
          out: str | None = None, as_json: bool = False) -> int:
    from bench.reports.compare import compare_runs
    from bench.reports.gate import evaluate, markdown, report_json

    report = evaluate(compare_runs(baseline, current), policy)
    summary = markdown(report, baseline_name, current_name, policy,
                       (baseline.run.host_probes, current.run.host_probes))
    _emit(json.dumps(report_json(report), indent=1) if as_json else summary, out)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a") as fh:
            fh.write(summary)
    return report.exit_code


def cmd_gate(args: argparse.Namespace) -> int:
    policy = _policy(args.policy)
    baseline, current = _load_pair(args, gating=True)
    return _gate(baseline, current, policy, args.baseline, args.current, args.out, args.json)


def _env_pairs(values: list[str] | None, option: str) -> dict[str, str]:
    env = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BenchInputError(option, f"expected KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def _checkout(path: str, option: str) -> Path:
    from bench.orchestrate.interleave import has_bench_package

    source = Path(path).resolve()
    if not has_bench_package(source):
        raise BenchInputError(option, f"{path} holds no bench package (bench/runners/worker.py)")
    return source


def _stopping(args: argparse.Namespace, policy: Any) -> Any:
    """bench ab's stopping rule: the policy's sequential test (paired rounds are judged by
    it), else the CI-width rule; the options' defaults depend on which."""
    from bench.orchestrate.rounds import (
        DEFAULT_MAX_ROUNDS,
        DEFAULT_ROUNDS,
        SEQUENTIAL_MAX_ROUNDS,
        Stopping,
    )

    test = policy.sequential_test()
    rounds = args.rounds if args.rounds is not None else \
        (test.min_rounds if test else DEFAULT_ROUNDS)
    max_rounds = args.max_rounds if args.max_rounds is not None else \
        (SEQUENTIAL_MAX_ROUNDS if test else DEFAULT_MAX_ROUNDS)
    return Stopping(rounds, max(max_rounds, rounds) if args.max_rounds is None else max_rounds,
                    args.target_half_width, test, args.time_budget)


def cmd_ab(args: argparse.Namespace) -> int:
    import contextlib

    from bench.launch.isolation import WorkerCode
    from bench.measurement.instructions import unavailable_reason
    from bench.orchestrate.interleave import git_worktree, run_ab
    from bench.reports.compare import compare_runs, render_comparison

    policy = _policy(args.policy)  # a bad policy is refused before minutes of measuring
    stopping = _stopping(args, policy)
    if args.instructions and (reason := unavailable_reason()) is not None:
        raise BenchInputError("--instructions", reason)
    if args.baseline_ref is None and args.baseline_source is None:
        raise BenchInputError("bench ab", "no baseline: give --baseline-ref (a commit of the "
                              "repository holding the suite) or --baseline-source (a bench "
                              "checkout), or both")
    current_env = _env_pairs(args.current_env, "--current-env")
    current = WorkerCode.this_checkout(current_env) if args.current_source is None else \
        WorkerCode(_checkout(args.current_source, "--current-source"), current_env)
    baseline_env = _env_pairs(args.baseline_env, "--baseline-env")
    out_dir = Path(args.out)
    users_repo = _users_repository(args.suite, current.source) \
        if args.baseline_ref is not None else None
    if args.baseline_ref is not None and args.baseline_source is not None and not users_repo:
        raise BenchInputError("bench ab", "--baseline-ref and --baseline-source both name "
                              "the baseline's bench; give one (both: a suite in your own "
                              "repository, at the ref, measured by that bench)")
    baseline_suite = None
    with contextlib.ExitStack() as stack:
        if users_repo is not None:
            _refuse_comparing_a_commit_with_itself(args.baseline_ref, users_repo,
                                                   args.baseline_source)
            tree = stack.enter_context(git_worktree(args.baseline_ref, users_repo,
                                                    bench_package=False))
            relative = Path(args.suite).resolve().relative_to(users_repo)
            baseline_suite = tree / relative
            if not baseline_suite.is_file():
                raise BenchInputError("--baseline-ref", f"{relative} does not exist at "
                                      f"{args.baseline_ref} in {users_repo}")
            tree = _checkout(args.baseline_source, "--baseline-source") \
                if args.baseline_source else current.source
        elif args.baseline_ref is not None:
            tree = stack.enter_context(git_worktree(args.baseline_ref, current.source))
        else:
            tree = _checkout(args.baseline_source, "--baseline-source")
        baseline = WorkerCode(tree, baseline_env)
        progress = None if args.no_progress else (lambda text: print(text, file=sys.stderr))
        base_run, cur_run = run_ab(args.suite, baseline, current, stopping, out_dir,
                                   select=parse_select(args.select), progress=progress,
                                   fork=args.workers == "fork",
                                   count_instructions=args.instructions,
                                   lockstep=args.rounds_run == "lockstep",
                                   baseline_suite=baseline_suite)
    from bench.reports.gate import refuse_misleading_pair
    from bench.results.schema import SLOWDOWN_ENV

    if not args.quiet:
        print(render_comparison(compare_runs(base_run, cur_run)))
        print()
    base_name, cur_name = str(out_dir / "baseline.json"), str(out_dir / "current.json")
    # A slowdown asked for on the command line is the point of the session; one inherited
    # from the shell's environment is not.
    refuse_misleading_pair(base_name, base_run, cur_name, cur_run,
                           allow_injected=SLOWDOWN_ENV in {**current_env, **baseline_env})
    return _gate(base_run, cur_run, policy, base_name, cur_name)


def _refuse_comparing_a_commit_with_itself(ref: str, repo: Path,
                                           baseline_bench: str | None) -> None:
    """--baseline-ref naming the commit the user's clean work tree holds, measured by the
    same bench: the session would compare the code with itself. Said before measuring."""
    from bench.orchestrate.interleave import git_commit, resolve_commit

    if baseline_bench is None and resolve_commit(ref, repo) == git_commit(repo):
        raise BenchInputError("--baseline-ref", f"{ref} is the commit {repo} holds, with no "
                              "change in its work tree: the session would compare the code "
                              "with itself", valid="an earlier commit, or uncommitted changes")


def _users_repository(suite: str, bench_source: Path) -> Path | None:
    """The git repository holding ``suite`` when it is not bench's own: a user's project,
    whose models --baseline-ref then checks out (None: bench's repository, or no git)."""
    from bench.orchestrate.interleave import git_toplevel

    top = git_toplevel(Path(suite).resolve().parent)
    if top is None or top == bench_source.resolve():
        return None
    return top


def cmd_table(args: argparse.Namespace) -> int:
    from bench.reports.hardware import render_table
    from bench.results.selection import select_cases
    from bench.results.store import load_run

    runs = select_cases([load_run(path) for path in args.runs], parse_select(args.select),
                        args.runs)
    try:
        text = render_table(runs, args.metric, args.reference, args.format)
    except KeyError:
        raise BenchInputError("--reference", f"no machine matches {args.reference!r}") from None
    if args.out:
        from bench.files import write_text_atomically

        write_text_atomically(Path(args.out), text, "--out")
    else:
        print(text, end="")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    from bench.measurement.fingerprint import cpu_family, fingerprint

    if args.isa or args.kind:
        import torch

        # The ISA level torch dispatches CPU kernels to: machines with one model string
        # ("AMD EPYC") differ 10x in bf16 between AVX2 and AVX512; baselines are per level,
        # and per CPU family within a level (--kind: avx512-epyc, avx512-xeon...).
        isa = torch.backends.cpu.get_cpu_capability().lower().replace(" ", "-")
        print(f"{isa}-{cpu_family(fingerprint()['cpu'].get('model', ''))}" if args.kind
              else isa)
        return 0

    print(json.dumps(fingerprint(), indent=2))
    return 0


DESCRIPTION = """\
Benchmark PyTorch and ONNX Runtime models: speed (median with a 95% CI, latency
percentiles), memory and accuracy next to the fp32 reference, across precisions,
backends, int8 quantization, pruning and batch sizes; each case in its own worker
process. Exit codes: 0 all well, 1 a case failed or the gate found a regression,
2 bad input."""

EXAMPLES = """\
examples:
  bench init mymodels:build            write suites/mymodels.toml for your model
  bench run suites/mymodels.toml       run it; results/mymodels.json and a table
  bench report results/mymodels.json --html report.html
  bench run suites/smoke.toml --out new.json
  bench gate --baseline results/baselines/smoke-cpu-avx512-xeon-2core.json --current new.json
  bench ab suites/smoke.toml --baseline-ref main    interleaved A/B against main
  bench table results/runs/*.json      hardware comparison
  bench list                           suites, workloads and modes

exit codes: 0 done; 1 a case failed or missed its target or SLO, a regression; 2 bad input;
3 gate/ab: host too noisy to decide speed; 130/143 interrupted/terminated (README)"""


def cmd_tune(args: argparse.Namespace) -> int:
    from bench.orchestrate.tune import TuneOptions, tune
    from bench.reports.tune import render_summaries, summarize_study

    require("tune", "bench tune")
    if args.trials < 1:
        raise BenchInputError("--trials", f"{args.trials} trials", valid="an integer >= 1")
    if args.seeds is not None and args.seeds < 1:
        raise BenchInputError("--training-seeds", f"{args.seeds} seeds",
                              valid="an integer >= 1")
    storage = Path(args.storage or f"results/tune-{Path(args.suite).stem}.journal")
    storage.parent.mkdir(parents=True, exist_ok=True)
    study = args.study or f"{Path(args.suite).stem}-{args.sampler}-seed{args.seed}"
    out = Path(args.out or storage.with_name(f"{storage.stem}-{study}-{os.getpid()}.json"))
    options = TuneOptions(storage=storage, study=study, sampler=args.sampler,
                          trials=args.trials, pruner=args.pruner, objective=args.objective,
                          seed=args.seed, grid_points=args.grid_points, seeds=args.seeds,
                          benchmark=args.benchmark)
    progress = None if args.no_progress else (lambda line: print(line, file=sys.stderr))
    result = tune(args.suite, out, options, progress)
    if not args.quiet:
        print(render_summaries([summarize_study(result)]))
    print(f"study {study} in {storage}; this process's trials in {out}", file=sys.stderr)
    return 0


def cmd_tune_report(args: argparse.Namespace) -> int:
    require("tune", "bench tune-report")
    from bench.reports.tune import (
        compare_samplers,
        load_studies,
        render_summaries,
        summarize_study,
    )

    summaries = [summarize_study(s) for s in load_studies(args.storage, args.study)]
    print(render_summaries(summaries))
    for line in compare_samplers(summaries):
        print(line)
    return 0


def _add_tune_commands(sub: Any) -> None:
    from bench.orchestrate.tune import OBJECTIVES, PRUNERS, SAMPLERS  # no torch, no optuna

    p = sub.add_parser("tune", help="hyperparameter search through Optuna over a benchmark's "
                                    "search table; each trial an isolated case")
    p.add_argument("suite", help=SUITE_HELP)
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe")
    p.add_argument("--trials", type=int, default=20, help="trials this process adds")
    p.add_argument("--pruner", choices=PRUNERS, default="none")
    p.add_argument("--objective", choices=OBJECTIVES, default="time_to_target")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (study seed)")
    p.add_argument("--training-seeds", "--seeds", dest="seeds", type=int,
                   help="training seeds per trial (default: the benchmark's training.seeds; "
                        "--seeds is the old name); --seed is the sampler's")
    p.add_argument("--grid-points", type=int, default=4,
                   help="values per numeric range under --sampler grid")
    p.add_argument("--study", help="study name (default: SUITE-SAMPLER-seedN)")
    p.add_argument("--storage", help="Optuna journal file shared by every process of the "
                                     "study (default: results/tune-SUITE.journal)")
    p.add_argument("--benchmark", help="the label of the benchmark to tune (default: the "
                                       "first with a search table)")
    p.add_argument("--out", help="result file for this process's trials")
    p.add_argument("--no-progress", action="store_true", help="no line per trial")
    p.add_argument("--quiet", action="store_true", help="do not print the study summary at the end")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("tune-report", help="summarize studies of a journal: best values, "
                                           "best-so-far, pruning savings, samplers compared")
    p.add_argument("storage", help="the Optuna journal file")
    p.add_argument("--study", action="append", help="a study (repeat; default: all)")
    p.set_defaults(func=cmd_tune_report)


# Built once per process: argparse takes 10 ms to build it, and main() may run thousands
# of times in one process (the fuzz test's 4,000 calls).
@functools.cache
def build_parser() -> argparse.ArgumentParser:
    from bench import __version__

    parser = argparse.ArgumentParser(prog="bench", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_commands(sub)
    _add_report_commands(sub)
    _add_ab_command(sub)
    _add_tune_commands(sub)
    return parser


def _add_run_commands(sub: Any) -> None:
    """init, list, run, max-batch: the commands that write, plan or run a suite."""
    p = sub.add_parser("init", help="write a starter suite for your model factory")
    p.add_argument("factory", help="module:function returning bench.UserModel, e.g. "
                                   "mymodels:build")
    p.add_argument("--out", help="the suite file to write (default suites/MODULE.toml)")
    p.add_argument("--python-path", default=None,
                   help="the folder holding the module (default: this folder)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("list", help="list suites and workloads, or one suite's cases")
    p.add_argument("suite", nargs="?", help=SUITE_HELP)
    _add_select(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="run a suite, each case in its own worker process")
    p.add_argument("suite", help=SUITE_HELP)
    p.add_argument("--out", help="result file (default results/SUITE.json)")
    p.add_argument("--resume", action="store_true", help="run only cases missing from --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_select(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--allow-missed-targets", action="store_true",
                   help="figures only: exit 0 even when a case missed its accuracy target, "
                        "an SLO or its time-to-accuracy target (failed, crashed, diverged "
                        "cases still exit 1)")
    p.add_argument("--quiet", action="store_true", help="do not print the report at the end")
    p.add_argument("--paired-rounds", type=int, default=None, metavar="N",
                   help="then measure each variant against its reference (fp32 eager...) in "
                        "N interleaved rounds with a paired CI (default: the suite's "
                        "[suite] paired_rounds, else 0: off)")
    p.add_argument("--shard", metavar="K/N", nargs="?", const="auto",
                   help="run only shard K of N (cases assigned by case id; merge the shard "
                        "files with bench merge); --shard alone, 'auto', '/N' or 'K/' take "
                        "the missing parts "
                        "from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT or a Kubernetes "
                        "Indexed Job's JOB_COMPLETION_INDEX")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: one case after another here; ray: each case a Ray task "
                        "holding a whole node (bench_node resource) or its GPUs, records "
                        "streamed into --out as they finish (pip install 'bench-suite[ray]')")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="the Ray cluster to submit to (default: RAY_ADDRESS, else a local "
                        "Ray on this machine)")
    p.add_argument("--retry-contended", type=int, default=0, metavar="N",
                   help="run a case timed under contention again, up to N times (its last "
                        "run stands; the earlier runs' reasons are kept); default 0")
    p.add_argument("--host-probe", action="store_true",
                   help="time fixed kernels (a one-thread matmul, a Python loop; about 1 s) "
                        "before the first case and after the last, so compare and gate can "
                        "tell a slower host from slower code")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("merge", help="merge the shard files of a sweep (bench run --shard) "
                                     "into one run file; missing shards and cases: exit 1")
    p.add_argument("shards", nargs="+", help="shard result files")
    p.add_argument("--out", required=True, help="the merged result file")
    p.add_argument("--partial", action="store_true",
                   help="write the merged file even when shards or cases are missing")
    p.add_argument("--allow-different-machines", action="store_true",
                   help="merge shards measured on machines whose fingerprints differ")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("max-batch", help="find the largest batch that fits in memory for "
                                         "each case (doubling, then bisection; each probe "
                                         "its own worker)")
    p.add_argument("suite", help=SUITE_HELP)
    _add_select(p)
    from bench.orchestrate.max_batch import DEFAULT_CEILING

    p.add_argument("--ceiling", type=int, default=DEFAULT_CEILING,
                   help="largest batch to probe")
    p.add_argument("--out", help="write the searches (every probe) as JSON")
    p.add_argument("--latency", metavar="PERCENTILE_ms=MS",
                   help="also bound the step latency: the largest batch whose p50/p90/p99 "
                        "step time (closed loop, one batch per step) stays within MS, "
                        "e.g. p99_ms=20; for text generation tpot_p50_ms=MS or "
                        "ttft_p99_ms=MS bound its TPOT or TTFT percentile over calls")
    p.add_argument("--no-progress", action="store_true",
                   help="no line per finished search")
    p.add_argument("--quiet", action="store_true", help="do not print the table at the end")
    p.set_defaults(func=cmd_max_batch)


FORMAT_HELP = "github (markdown, the default), plain, latex, csv or html"


def _add_select(p: Any) -> None:
    p.add_argument("--select", action="append", metavar="AXIS=V1,V2",
                   help="keep only cases with these axis values, or label=NAME: those of "
                        "the benchmarks with that label (repeatable)")


def _add_pair_arguments(p: Any, json_help: str) -> None:
    p.add_argument("pair", nargs="*", metavar="BASELINE CURRENT",
                   help="the two run files (or --baseline and --current)")
    p.add_argument("--baseline", help="the baseline run file")
    p.add_argument("--current", help="the run file under test")
    _add_select(p)
    p.add_argument("--out", help="write the output to this file instead of stdout")
    p.add_argument("--json", action="store_true", help=json_help)


def _add_report_commands(sub: Any) -> None:
    """report, show, compare, gate, table, env: the commands that read result files (no
    torch)."""
    from bench.reports.hardware import FORMATS as TABLE_FORMATS
    from bench.reports.hardware import METRICS
    from bench.reports.table import FORMATS

    p = sub.add_parser("report", help="print a run file as a table")
    p.add_argument("run", help="a result file written by bench run")
    p.add_argument("--format", choices=FORMATS, help=FORMAT_HELP)
    _add_select(p)
    p.add_argument("--out", help="write the table to this file instead of stdout")
    p.add_argument("--html", metavar="OUT.html",
                   help="write one self-contained HTML file (table + plots) instead")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("show", help="a run's cases a line each, or one case whole: how its "
                                    "figure was taken, its raw samples as a histogram, "
                                    "percentiles, memory, accuracy, stderr tail")
    p.add_argument("run", help="a result file written by bench run")
    p.add_argument("case", nargs="?", help="a case id, or a part of one that only it has")
    _add_select(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("compare", help="compare two run files case by case (speed with a "
                                       "95%% CI and a Mann-Whitney test, memory, accuracy)")
    _add_pair_arguments(p, "a JSON list of the case comparisons instead of the table")
    p.add_argument("--format", choices=FORMATS, default="github", help=FORMAT_HELP)
    p.add_argument("--allow-different-machines", action="store_true",
                   help="compare even when the fingerprints differ")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("gate", help="fail (exit 1) on a regression against a baseline; "
                                    "exit 2 on bad input; exit 3 when the host was too noisy "
                                    "to decide speed; markdown summary")
    _add_pair_arguments(p, "the verdict as JSON (exit code, each finding) instead of the "
                           "markdown summary")
    p.add_argument("--policy", help="TOML thresholds ([speed] max_drop, alpha, gate; "
                                    "[memory] max_growth, gate; [accuracy] min_ratio, gate)")
    p.add_argument("--allow-different-machines", action="store_true",
                   help="gate even when the fingerprints differ")
    p.add_argument("--allow-injected-slowdown", action="store_true",
                   help="gate runs that had a test-injected slowdown (BENCH_TEST_SLOWDOWN)")
    p.set_defaults(func=cmd_gate)

    p = sub.add_parser("table", help="hardware comparison: cases x machines, speed-up "
                                     "against a reference machine, geometric mean")
    p.add_argument("runs", nargs="+", help="run files, one or more per machine")
    p.add_argument("--metric", choices=sorted(METRICS), default="throughput")
    p.add_argument("--reference", help="the machine the others are compared with (a part "
                                       "of its column name; default: the first run)")
    p.add_argument("--format", choices=TABLE_FORMATS, default="github", help=FORMAT_HELP)
    _add_select(p)
    p.add_argument("--out", help="write the table to this file instead of stdout")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("env", help="print this machine's environment fingerprint")
    p.add_argument("--isa", action="store_true",
                   help="print only the CPU ISA level torch dispatches to (avx2, avx512...)")
    p.add_argument("--kind", action="store_true",
                   help="print ISA level and CPU family (avx512-epyc, avx2-epyc, "
                        "avx512-xeon...): which stored baseline is like this machine")
    p.set_defaults(func=cmd_env)


def _add_ab_command(sub: Any) -> None:
    from bench.orchestrate.rounds import (
        DEFAULT_MAX_ROUNDS,
        DEFAULT_ROUNDS,
        DEFAULT_TARGET_HALF_WIDTH,
        SEQUENTIAL_MAX_ROUNDS,
    )

    p = sub.add_parser("ab", help="interleaved A/B: run a suite for a baseline checkout and "
                                  "this one, alternating case by case, then gate on the "
                                  "paired rounds (exit 0 pass, 1 regression, 2 bad input, "
                                  "3 no verdict: the host too noisy to decide speed)")
    p.add_argument("suite", help=SUITE_HELP)
    p.add_argument("--baseline-ref", help="a commit (e.g. main, HEAD~1) of the git "
                                          "repository holding the suite, checked out as the "
                                          "baseline: your models at that commit, measured by "
                                          "this bench (in bench's own repository: bench "
                                          "itself at that commit)")
    p.add_argument("--baseline-source", help="a checkout holding the bench package the "
                                             "baseline side runs (alone: the baseline is "
                                             "that bench; with --baseline-ref on your "
                                             "repository: your models at the ref, measured "
                                             "by that bench)")
    p.add_argument("--current-source", help="the checkout under test (default: this one)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds per case at least; each runs one worker process per side "
                        f"(default: 3 under the policy's sequential test, else {DEFAULT_ROUNDS})")
    p.add_argument("--max-rounds", type=int, default=None,
                   help="rounds per case at most: an undecided case gets more rounds, up to "
                        f"this (default {SEQUENTIAL_MAX_ROUNDS} under the sequential test, "
                        f"else {DEFAULT_MAX_ROUNDS})")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="start no round after this long; cases still undecided are "
                        "inconclusive (the gate fails or warns by policy)")
    p.add_argument("--target-half-width", type=float, default=DEFAULT_TARGET_HALF_WIDTH,
                   help="without the sequential test ([speed] sequential = false): the "
                        "paired CI's half width (log scale; 0.04 = about +-4%%) at which a "
                        "case stops adding rounds")
    p.add_argument("--out", "--out-dir", dest="out", default="results/ab",
                   help="the folder where baseline.json and current.json are written "
                        "(default results/ab; --out-dir is the old name)")
    p.add_argument("--policy", help="gate policy TOML (as for bench gate)")
    _add_select(p)
    p.add_argument("--baseline-env", action="append", metavar="KEY=VALUE",
                   help="extra environment for the baseline's workers (repeatable)")
    p.add_argument("--current-env", action="append", metavar="KEY=VALUE",
                   help="extra environment for the current side's workers (repeatable)")
    p.add_argument("--workers", choices=("fork", "spawn"), default="fork",
                   help="fork: each side's CPU workers are forked, one per round, from a "
                        "server that imported torch once (default); spawn: a fresh "
                        "interpreter per worker")
    p.add_argument("--rounds-run", choices=("lockstep", "sequential"), default="lockstep",
                   help="lockstep: where a case allows, a round runs both sides' workers at "
                        "once, taking turns block by block, so both are timed over the same "
                        "stretch of host time (default); sequential: one side's worker "
                        "after the other's")
    p.add_argument("--instructions", action="store_true",
                   help="also count each CPU case's instructions per step under valgrind's "
                        "callgrind, once per side (about half a minute each): a deterministic "
                        "signal reported beside wall time ([instructions] in the policy)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    p.add_argument("--quiet", action="store_true",
                   help="print only the gate's summary, not the comparison table")
    p.set_defaults(func=cmd_ab)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI runner cancelling the job): unwound like Ctrl-C, exit 128 + 15."""


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        if getattr(args, "suite", None):
            args.suite = resolve_suite(args.suite)
        return args.func(args)
    except BenchInputError as exc:
        print(f"bench: error: {exc.one_line()}", file=sys.stderr)
        return exit_codes.BAD_INPUT
    except BrokenPipeError:  # `bench list | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exit_codes.OK
    except KeyboardInterrupt as exc:
        # The running worker's group was killed on the way up (bench.launch.isolation).
        print(f"bench: {'terminated' if isinstance(exc, Terminated) else 'interrupted'}; "
              "finished cases (bench ab: rounds) are saved; bench run continues with "
              "--resume", file=sys.stderr)
        return exit_codes.TERMINATED if isinstance(exc, Terminated) else exit_codes.INTERRUPTED
