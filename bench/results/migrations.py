"""Read older result files: each migration turns version N's JSON into version N+1's.

A file is migrated step by step, in memory, up to ``SCHEMA_VERSION``; the file on disk is
never rewritten by a reader. Every change of the record bumps the version and adds its
step here (as pyperf reads its older JSON files).

A worker of an older bench (the baseline side of ``bench ab``) is spoken to in its own
version: ``case_for_worker`` rewrites the case file it reads (``DOWNGRADES``), and its
record is read back through the same migrations as a file (``migrate_case``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Migration = Callable[[dict[str, Any]], dict[str, Any]]


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    # Version 2 added statuses (diverged, contended) and an optional
    # CaseResult.interference; every version-1 record is a valid version-2 record.
    return {**data, "schema_version": 2}


def _label_of(case_id: object) -> str | None:
    head, _, _ = str(case_id).partition("[")  # workload/phase[:label]
    _, colon, label = head.partition(":")
    return label if colon and label else None


def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    # Version 3 records each case's benchmark label, read here once from the case id.
    cases = data.get("cases")
    if isinstance(cases, list):
        cases = [{**c, "label": _label_of(c.get("case_id"))} if isinstance(c, dict) else c
                 for c in cases]
    return {**data, "cases": cases, "schema_version": 3}


# The variant axes and their reference values up to version 3, when parity read them from
# one table instead of each axis's declared default.
_V3_PARITY_REFERENCE = {"precision": "fp32", "backend": "eager", "quantization": "none",
                        "pruning": "none", "distillation": "none"}


def _rename_in_id(case_id: str, old: str, new: str) -> str:
    head, bracket, rest = case_id.partition("[")
    if not bracket:
        return case_id
    tokens = rest[:-1].split(",") if rest.endswith("]") else rest.split(",")
    tokens = [new if t == old else t for t in tokens]
    return f"{head}[{','.join(tokens)}]"


def _gpt_compile_to_backend(case: dict[str, Any]) -> dict[str, Any]:
    axes = case.get("axes")
    if case.get("workload") != "gpt" or not isinstance(axes, dict) or "compile" not in axes:
        return case
    compiled = axes["compile"]
    backend = "compile" if compiled is True else "eager"
    case_id = case.get("case_id")
    if isinstance(case_id, str):
        case_id = _rename_in_id(case_id, f"compile={compiled}", f"backend={backend}")
    return {**case, "case_id": case_id,
            "axes": {("backend" if k == "compile" else k): (backend if k == "compile" else v)
                     for k, v in axes.items()}}


def _v3_to_v4(data: dict[str, Any]) -> dict[str, Any]:
    # Version 4: gpt's compile boolean became the shared backend axis; each case records
    # its parity reference (the v3 table, for the variant axes the case has).
    cases = data.get("cases")
    if isinstance(cases, list):
        cases = [c if not isinstance(c, dict) else _with_v3_reference(_gpt_compile_to_backend(c))
                 for c in cases]
    return {**data, "cases": cases, "schema_version": 4}


def _with_v3_reference(case: dict[str, Any]) -> dict[str, Any]:
    axes = case.get("axes") if isinstance(case.get("axes"), dict) else {}
    return {**case, "parity_reference": {a: v for a, v in _V3_PARITY_REFERENCE.items()
                                         if a in axes}}


def _v4_to_v5(data: dict[str, Any]) -> dict[str, Any]:
    # Version 5 added the optional CaseResult.vs_reference: every version-4 record is a
    # valid version-5 record.
    return {**data, "schema_version": 5}


def _v5_to_v6(data: dict[str, Any]) -> dict[str, Any]:
    # Version 6 added the optional CaseResult.time_to_accuracy and .classes and the status
    # not_converged; the lr that older records hold in params stays there.
    return {**data, "schema_version": 6}


def _v6_to_v7(data: dict[str, Any]) -> dict[str, Any]:
    # Version 7 added RunInfo.shard and RunInfo.shards (sharded sweeps and their merge):
    # every version-6 record is a valid version-7 record of an unsharded run.
    return {**data, "schema_version": 7}


def _v7_to_v8(data: dict[str, Any]) -> dict[str, Any]:
    # Version 8 added CaseResult.serving (LoadGen scenarios), .energy and .clocks, and the
    # scenario axis: every version-7 record is a valid version-8 record of closed-loop
    # cases whose energy and clocks were not recorded.
    return {**data, "schema_version": 8}


def _v8_to_v9(data: dict[str, Any]) -> dict[str, Any]:
    # Version 9 added TimingResult.trial_timing and .latency_trial_samples_s (CUDA
    # throughput from one event pair per block, latency from separate trials): every
    # earlier trial was timed per iteration, its latency read from those samples.
    cases = data.get("cases")
    for case in cases if isinstance(cases, list) else []:  # the loader refuses what is not
        timing = case.get("timing") if isinstance(case, dict) else None
        if isinstance(timing, dict):
            timing.setdefault("trial_timing", "per_iteration")
            timing.setdefault("latency_trial_samples_s", [])
    return {**data, "schema_version": 9}


def _v9_to_v10(data: dict[str, Any]) -> dict[str, Any]:
    # Version 10 added RunInfo.host_probes: a version-9 run was taken without the probe.
    return {**data, "schema_version": 10}


def _v10_to_v11(data: dict[str, Any]) -> dict[str, Any]:
    # Version 11 added Budget.contended_above (recorded in each case's budget): every
    # earlier worker marked a case contended above 10%, which the default still is.
    return {**data, "schema_version": 11}


def _v11_to_v12(data: dict[str, Any]) -> dict[str, Any]:
    # Version 12 added RankReport.interference, .energy and .clocks, and CaseResult.mode:
    # a version-11 rank recorded none of them, and no version-11 suite could name a mode,
    # which the fields' defaults (none) say.
    return {**data, "schema_version": 12}


def _typed_gate_figures(case: dict[str, Any]) -> dict[str, Any]:
    details = dict(case.get("details") or {})
    medians = details.pop("process_medians_s", None)
    details.pop("ab_rounds", None)  # always the number of medians kept
    left_out = details.pop("ab_dropped_rounds", None)
    reasons = details.pop("ab_dropped_reasons", None)
    unmeasured = details.pop("ab_unmeasured", None)
    steps = details.pop("instructions_steps", None)
    per_step = details.pop("instructions_per_step", None)
    method = details.pop("instructions_method", None)
    slowdown = details.pop("injected_slowdown", None)
    case = {**case, "details": details}
    if medians is not None or unmeasured:
        case["rounds"] = {"medians_s": medians if medians is not None else [],
                          "left_out": left_out or 0, "left_out_reasons": reasons or [],
                          "out_of_time": bool(unmeasured)}
    if steps is not None or per_step is not None:
        case["instructions"] = {"steps": steps if isinstance(steps, int) else 0,
                                "per_step": per_step, "method": method or ""}
    if slowdown is not None:
        case["injected_slowdown"] = slowdown
    return case


def _v12_to_v13(data: dict[str, Any]) -> dict[str, Any]:
    # Version 13 moved the figures the gate decides on from details into typed fields:
    # rounds, instructions and injected_slowdown (the schema's changelog names the keys).
    cases = data.get("cases")
    if isinstance(cases, list):
        cases = [_typed_gate_figures(c) if isinstance(c, dict) else c for c in cases]
    return {**data, "cases": cases, "schema_version": 13}


def _v13_to_v14(data: dict[str, Any]) -> dict[str, Any]:
    # Version 14 added CaseResult.generation (text-generation cases); older files have none.
    return {**data, "schema_version": 14}


def _v14_to_v15(data: dict[str, Any]) -> dict[str, Any]:
    # Version 15 added token serving's figures (LoadGenRun.ttft_ms...); older files served
    # no tokens, so their fields stay none.
    return {**data, "schema_version": 15}


def _v15_to_v16(data: dict[str, Any]) -> dict[str, Any]:
    # Version 16 added ParallelResult.data_parallel_size; every older mode was data-parallel.
    cases = data.get("cases")
    if isinstance(cases, list):
        cases = [_with_data_parallel_size(c) for c in cases]
    return {**data, "cases": cases, "schema_version": 16}


def _with_data_parallel_size(case: Any) -> Any:
    parallel = case.get("parallel") if isinstance(case, dict) else None
    if not isinstance(parallel, dict) or "data_parallel_size" in parallel:
        return case
    return {**case, "parallel": {**parallel, "data_parallel_size": parallel.get("world_size")}}


def _v16_to_v17(data: dict[str, Any]) -> dict[str, Any]:
    # Version 17 added the measured pipeline bubble (RankReport and ParallelResult
    # .pipeline_bubble) and exposed communication's interval; older files ran no pipeline
    # with it and sampled no interval, so both stay none.
    return {**data, "schema_version": 17}


MIGRATIONS: dict[int, Migration] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4, 4: _v4_to_v5,
                                    5: _v5_to_v6, 6: _v6_to_v7, 7: _v7_to_v8, 8: _v8_to_v9,
                                    9: _v9_to_v10, 10: _v10_to_v11, 11: _v11_to_v12,
                                    12: _v12_to_v13, 13: _v13_to_v14,
                                    14: _v14_to_v15, 15: _v15_to_v16,
                                    16: _v16_to_v17}


def migrate(data: dict[str, Any], version: int, target: int) -> dict[str, Any]:
    while version < target:
        data = MIGRATIONS[version](data)
        version += 1
    return data


def migrate_case(case: dict[str, Any], version: int, target: int) -> dict[str, Any]:
    """One case record (a worker's result) of ``version`` read as ``target``'s."""
    return migrate({"cases": [case]}, version, target)["cases"][0]


def _case_v4_to_v3(case: dict[str, Any]) -> dict[str, Any]:
    axes = dict(case.get("axes", {}))
    if case.get("workload") == "gpt" and "backend" in axes:
        axes = {("compile" if k == "backend" else k): (v == "compile" if k == "backend" else v)
                for k, v in axes.items()}
        id_axes = case.get("id_axes")
        if id_axes is not None:
            case = {**case, "id_axes": ["compile" if a == "backend" else a for a in id_axes]}
    return {**case, "axes": axes}


# Workloads whose lr became an axis in version 6 (a recipe axis), and the recipe axes
# added with it: a version-5 worker reads lr from params and knows none of the others.
_V6_LR_WORKLOADS = ("digits_cnn", "linreg")


def _case_v6_to_v5(case: dict[str, Any]) -> dict[str, Any]:
    axes = dict(case.get("axes", {}))
    params = dict(case.get("params", {}))
    if case.get("workload") in _V6_LR_WORKLOADS and "lr" in axes:
        params["lr"] = axes.pop("lr")
        id_axes = case.get("id_axes")
        if id_axes is not None:
            case = {**case, "id_axes": [a for a in id_axes if a != "lr"]}
    return {**case, "axes": axes, "params": params}


def _case_v11_to_v10(case: dict[str, Any]) -> dict[str, Any]:
    # An older worker builds Budget(**budget) and knows no contended_above: it marks
    # contention at its own 10%.
    budget = {k: v for k, v in case.get("budget", {}).items() if k != "contended_above"}
    return {**case, "budget": budget}


# A case file (CaseSpec.to_dict) of version N+1 turned into version N's, for older workers.
DOWNGRADES: dict[int, Migration] = {4: _case_v4_to_v3, 6: _case_v6_to_v5,
                                    11: _case_v11_to_v10}


def case_for_worker(case: dict[str, Any], version: int, worker_version: int) -> dict[str, Any]:
    """The case file a worker of ``worker_version`` reads (it ignores keys it lacks)."""
    while version > worker_version:
        case = DOWNGRADES[version](case) if version in DOWNGRADES else case
        version -= 1
    return case
