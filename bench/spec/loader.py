"""Load a suite TOML file into a validated SuiteSpec. Every problem is one line."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import math
import os
import re
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any

from bench.errors import BenchInputError
from bench.extras import require
from bench.files import PACKAGE_PREFIX, package_folder, parse_toml, read_bounded_text
from bench.spec.axes import Setting
from bench.spec.expand import benchmark_case_ids, matrix_combinations
from bench.spec.model import (
    ALLOCATOR_POLICIES,
    CLOSED_LOOP,
    MIN_TRIALS_FOR_VERDICT,
    SLO_KEYS,
    AccuracyTarget,
    BenchmarkSpec,
    Budget,
    SearchDimension,
    ServingSpec,
    SuiteSpec,
    TrainingRunSpec,
)
from bench.units import DEFAULT_PARITY_TARGET, MAX_MEMORY_MIB, MIB

_SUITE_KEYS = {"suite", "budget", "benchmark"}
_SUITE_TABLE_KEYS = {"name", "description", "max_cases", "paired_rounds"}
_BENCHMARK_KEYS = {"label", "parity_target", "workload", "phase", "matrix", "params", "accuracy",
                   "budget", "model", "python_path", "slo", "target", "training",
                   "search", "serving", "mode"}
# ``model = "module:function"``: the user's own model, run by this workload.
USER_MODEL_WORKLOAD = "model"
_FACTORY_FORMAT = "module:function, e.g. \"mymodels:build\" (module importable from " \
                  "python_path or sys.path)"
# A suite with more cases than this is refused before its list is built (two axes of
# 1,000 values are a million cases); ``[suite] max_cases`` raises the limit.
DEFAULT_MAX_CASES = 10_000
# Longer than any case should run, and short enough for threading.Timer (inf overflows).
MAX_TIMEOUT_S = 7 * 24 * 3600.0

# Every budget number is finite; these must also be above zero (0 s of trials, a 0 s
# timeout or a 0 MiB limit would fail every case), the rest may be zero.
_POSITIVE_BUDGET = {"target_rel_ci", "max_time_s", "trial_time_s", "cv_warning", "timeout_s",
                    "memory_limit_mib", "contended_above"}
_BUDGET_MINIMUM = {"min_trials": MIN_TRIALS_FOR_VERDICT, "max_trials": 1,
                   "warmup_min_iters": 1, "processes": 1}
_BUDGET_SETTINGS = {
    f.name: Setting(f.name, float if f.type in ("float", "float | None") else int,
                    minimum=_BUDGET_MINIMUM.get(f.name, 0),
                    above_minimum=f.name in _POSITIVE_BUDGET,
                    maximum=MAX_TIMEOUT_S if f.name in ("timeout_s", "max_time_s",
                                                        "warmup_max_s")
                    else 1.0 if f.name == "contended_above"
                    else MAX_MEMORY_MIB if f.name == "memory_limit_mib" else None)
    for f in dataclasses.fields(Budget) if f.type != "str"
}
_BUDGET_SETTINGS["allocator"] = Setting("allocator", str, choices=ALLOCATOR_POLICIES)


def _check_keys(table: Any, allowed: set[str], source: str, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise BenchInputError(source, f"expected a table, got {type(table).__name__}",
                              key=where or None)
    for key in table:
        if key not in allowed:
            full = f"{where}.{key}" if where else key
            raise BenchInputError(source, "unknown key", key=full, valid=sorted(allowed))
    return table


def _load_budget(table: Any, base: Budget, source: str, where: str) -> Budget:
    table = _check_keys(table, set(_BUDGET_SETTINGS), source, where)
    if "min_trials" in table and isinstance(table["min_trials"], int) and \
            not isinstance(table["min_trials"], bool) and \
            table["min_trials"] < _BUDGET_MINIMUM["min_trials"]:
        need = _BUDGET_MINIMUM["min_trials"]
        raise BenchInputError(source, f"{table['min_trials']} trials cannot reach a verdict: "
                              f"Mann-Whitney needs {need} per side to reach p < 0.05",
                              key=f"{where}.min_trials", valid=f"integer >= {need}")
    values = {key: _BUDGET_SETTINGS[key].validate(value, source, f"{where}.{key}")
              for key, value in table.items()}
    budget = dataclasses.replace(base, **values)
    if budget.max_trials < budget.min_trials:
        raise BenchInputError(source, "max_trials is below min_trials",
                              key=f"{where}.max_trials", valid=f"integer >= {budget.min_trials}")
    return budget


def _load_accuracy(table: Any, metrics: tuple[str, ...], source: str,
                   where: str) -> tuple[AccuracyTarget, ...]:
    table = _check_keys(table, set(metrics), source, where)
    targets = []
    bound = Setting("bound", float)
    for metric, bounds in table.items():
        bounds = _check_keys(bounds, {"min", "max"}, source, f"{where}.{metric}")
        values = {k: bound.validate(v, source, f"{where}.{metric}.{k}")
                  for k, v in bounds.items()}
        if values.get("min", -math.inf) > values.get("max", math.inf):
            raise BenchInputError(source, f"min {values['min']!r} is above max "
                                  f"{values['max']!r}: no value could pass",
                                  key=f"{where}.{metric}", valid="min <= max")
        targets.append(AccuracyTarget(metric=metric, **values))
    return tuple(targets)


def _load_benchmark(table: Any, index: int, default_budget: Budget,
                    source: str, folder: Path) -> BenchmarkSpec:
    where = f"benchmark[{index}]"
    table = _check_keys(table, _BENCHMARK_KEYS, source, where)
    if "model" in table or "python_path" in table:
        table = _user_model_table(table, source, where, folder)
    workload, phase = _load_workload(table, source, where)
    axes = workload.phase_axes(phase)
    matrix_table = table.get("matrix", {})
    lists = {}
    if isinstance(matrix_table, dict):
        matrix_table = dict(matrix_table)
        lists = {k: matrix_table.pop(k) for k in MATRIX_LISTS if k in matrix_table}
    matrix_table = _check_keys(matrix_table, set(axes), source, f"{where}.matrix")
    matrix, params = _load_matrix(table, matrix_table, workload, phase, source, where)
    exclude, include = (_load_matrix_list(lists.get(name, []), name, matrix, matrix_table,
                                          axes, source, f"{where}.matrix.{name}")
                        for name in MATRIX_LISTS)
    budget = default_budget
    if "budget" in table:
        budget = _load_budget(table["budget"], default_budget, source, f"{where}.budget")
    label = table.get("label")
    if label is not None and (not isinstance(label, str) or not label.isidentifier()):
        raise BenchInputError(source, f"bad label {label!r}", key=f"{where}.label",
                              valid="a name of letters, digits and underscores")
    parity = Setting("parity_target", float, DEFAULT_PARITY_TARGET, minimum=0).validate(
        table.get("parity_target", DEFAULT_PARITY_TARGET), source, f"{where}.parity_target")
    if parity > 1:
        raise BenchInputError(source, f"value {parity!r} is above 1",
                              key=f"{where}.parity_target", valid="number in [0, 1]")
    training = None
    if "target" in table or "training" in table:
        training = _load_training(table, workload, phase, source, where)
    spec = BenchmarkSpec(
        workload=workload.name, phase=phase, matrix=matrix, label=label,
        slo=_load_slo(table.get("slo", {}), source, f"{where}.slo"), training=training,
        search=_load_search(table.get("search", {}), axes, matrix_table, source,
                            f"{where}.search"),
        serving=_load_serving(table, matrix, source, where),
        mode=_load_mode(table, source, where), parity_target=parity,
        exclude=exclude, include=include,
        named_axes=tuple(a for a in axes if a in matrix_table), params=params,
        accuracy=_load_accuracy(table.get("accuracy", {}), workload.metrics(phase), source,
                                f"{where}.accuracy"),
        budget=budget, parity_reference=workload.parity_reference(phase))
    if exclude and not _case_count(spec, 1_000_000):
        raise BenchInputError(source, "the exclude list leaves no case",
                              key=f"{where}.matrix.exclude", valid="fewer or narrower entries")
    return spec


def _load_workload(table: dict[str, Any], source: str, where: str) -> tuple[Any, str]:
    """The benchmark's workload class and phase, both checked."""
    # On use: bench.workloads imports bench.spec.axes, so a module-level import is a cycle.
    from bench.workloads import get_workload, workload_names

    for required in ("workload", "phase"):
        if required not in table:
            raise BenchInputError(source, "missing required key", key=f"{where}.{required}")
    name = table["workload"]
    if not isinstance(name, str) or name not in workload_names():
        raise BenchInputError(source, f"unknown workload {name!r}", key=f"{where}.workload",
                              valid=workload_names())
    workload = get_workload(name)
    phase = table["phase"]
    if phase not in workload.phases:
        raise BenchInputError(source, f"unknown phase {phase!r} for workload {name}",
                              key=f"{where}.phase", valid=workload.phases)
    return workload, phase


def _load_matrix(table: dict[str, Any], matrix_table: dict[str, Any], workload: Any,
                 phase: str, source: str, where: str,
                 ) -> tuple[dict[str, tuple[Any, ...]], dict[str, Any]]:
    """Every axis's values (the matrix's, one fixed in params, or the default) and the
    workload's parameters, each validated against its setting."""
    axes = workload.phase_axes(phase)
    param_settings = {k: s for k, s in workload.params().items()
                      if s.phases is None or phase in s.phases}
    params_table = _check_keys(table.get("params", {}), set(param_settings) | set(axes), source,
                               f"{where}.params")
    # An axis given one value in params (``params = { lr = 0.1 }``) holds that value in
    # every case without naming it in the case ids.
    fixed = {k: v for k, v in params_table.items() if k in axes and k not in param_settings}
    for axis_name in fixed:
        if axis_name in matrix_table:
            raise BenchInputError(source, "set in both params and matrix",
                                  key=f"{where}.params.{axis_name}", valid="one of the two")
    matrix: dict[str, tuple[Any, ...]] = {}
    for axis_name, setting in axes.items():
        raw = matrix_table.get(axis_name, fixed.get(axis_name, setting.default))
        if axis_name in fixed and isinstance(raw, list):
            raise BenchInputError(source, "params hold one value; a list of values belongs "
                                  "in matrix", key=f"{where}.params.{axis_name}",
                                  valid=setting.valid_values())
        values = raw if isinstance(raw, list) else [raw]
        if not values:
            raise BenchInputError(source, "empty list", key=f"{where}.matrix.{axis_name}",
                                  valid=setting.valid_values())
        key = f"{where}.{'params' if axis_name in fixed else 'matrix'}.{axis_name}"
        matrix[axis_name] = tuple(setting.validate(v, source, key) for v in values)
    params = {
        key: setting.validate(params_table[key], source, f"{where}.params.{key}")
        if key in params_table else setting.default
        for key, setting in param_settings.items()
    }
    return matrix, params


MATRIX_LISTS = ("exclude", "include")


def _load_matrix_list(raw: Any, name: str, matrix: dict[str, tuple[Any, ...]],
                      matrix_table: dict[str, Any], axes: dict[str, Setting], source: str,
                      where: str) -> tuple[dict[str, tuple[Any, ...]], ...]:
    """``exclude`` or ``include``: a list of tables, each naming axes of the matrix with a
    value or a list of values. An excluded value must be one the matrix takes (else the
    entry excludes nothing: a typo); an included one any value the axis accepts."""
    named = sorted(matrix_table)
    if not isinstance(raw, list) or not all(isinstance(e, dict) and e for e in raw):
        raise BenchInputError(source, f"expected a list of tables, got {raw!r}", key=where,
                              valid=f"[{{ AXIS = VALUE, ... }}, ...] over {', '.join(named)}")
    entries = []
    for i, entry in enumerate(raw):
        _check_keys(entry, set(matrix_table), source, f"{where}[{i}]")
        values = {}
        for axis, value in entry.items():
            key = f"{where}[{i}].{axis}"
            given = value if isinstance(value, list) else [value]
            if not given:
                raise BenchInputError(source, "empty list", key=key, valid=matrix[axis])
            checked = tuple(axes[axis].validate(v, source, key) for v in given)
            if name == "exclude" and (absent := [v for v in checked if v not in matrix[axis]]):
                raise BenchInputError(source, f"the matrix never takes {absent[0]!r}: the "
                                      "entry would exclude nothing", key=key,
                                      valid=matrix[axis])
            values[axis] = checked
        entries.append(values)
    return tuple(entries)


def _load_mode(table: dict[str, Any], source: str, where: str) -> str | None:
    """``mode = "name"``: a registered mode (bench.modes) runs the benchmark's cases."""
    if "mode" not in table:
        return None
    # On use: the modes import the measurement layer, which the loader keeps out.
    from bench.modes import mode_names

    name = table["mode"]
    if not isinstance(name, str) or name not in mode_names():
        raise BenchInputError(source, f"unknown mode {name!r}", key=f"{where}.mode",
                              valid=mode_names())
    return name


_SEARCH_FORMAT = 'a list of values, or { low = ..., high = ..., log = true|false } for a ' \
                 'numeric axis'


def _load_search(table: Any, axes: dict[str, Setting], matrix: dict[str, Any], source: str,
                 where: str) -> tuple[SearchDimension, ...]:
    """``search = { lr = { low = 1e-4, high = 0.1, log = true }, optimizer = ["sgd",
    "adam"] }``: the space ``bench tune`` samples; each value checked as the axis checks
    it."""
    table = _check_keys(table, set(axes), source, where)
    dims = []
    for axis, spec in table.items():
        setting, key = axes[axis], f"{where}.{axis}"
        if axis in matrix:
            raise BenchInputError(source, "searched and in the matrix", key=key,
                                  valid="one of the two")
        if isinstance(spec, list):
            if not spec:
                raise BenchInputError(source, "empty list", key=key, valid=_SEARCH_FORMAT)
            dims.append(SearchDimension(axis, choices=tuple(
                setting.validate(v, source, key) for v in spec)))
            continue
        spec = _check_keys(spec, {"low", "high", "log"}, source, key)
        if setting.kind not in (int, float) or "low" not in spec or "high" not in spec:
            raise BenchInputError(source, "a range needs low and high on a numeric axis",
                                  key=key, valid=_SEARCH_FORMAT)
        low = setting.validate(spec["low"], source, f"{key}.low")
        high = setting.validate(spec["high"], source, f"{key}.high")
        log = spec.get("log", False)
        if not isinstance(log, bool) or not low < high or (log and low <= 0):
            raise BenchInputError(source, f"bad range [{low!r}, {high!r}] (log={log!r})",
                                  key=key, valid="low < high; low > 0 with log = true")
        dims.append(SearchDimension(axis, low=low, high=high, log=log,
                                    integer=setting.kind is int))
    return tuple(dims)


_TRAINING_SETTINGS = {
    "seeds": Setting("seeds", int, minimum=3,
                     help="runs per case, each in its own worker (olympic score: >= 3)"),
    "first_seed": Setting("first_seed", int, minimum=0),
    "eval_every": Setting("eval_every", int, minimum=0,
                          help="training samples between evaluations (0: once per epoch)"),
    "max_epochs": Setting("max_epochs", float, minimum=0, above_minimum=True),
    "max_time_s": Setting("max_time_s", float, minimum=0, above_minimum=True,
                          maximum=MAX_TIMEOUT_S),
}


def _load_training(table: dict[str, Any], workload: Any, phase: str, source: str,
                   where: str) -> TrainingRunSpec:
    """``target = { val_accuracy = 0.97 }`` and ``training = { seeds = 5, eval_every = 256,
    max_epochs = 30, max_time_s = 60 }``: the time-to-accuracy mode of a training phase."""
    evaluated = workload.eval_metrics(phase)
    if not evaluated:
        raise BenchInputError(source, f"{workload.name}/{phase} cannot run to a target (it "
                              "does not evaluate while training)", key=f"{where}.target",
                              valid="a benchmark of " + ", ".join(_evaluated_workloads()))
    values: dict[str, Any] = {}
    if "training" in table:
        settings = _check_keys(table["training"], set(_TRAINING_SETTINGS), source,
                               f"{where}.training")
        values = {k: _TRAINING_SETTINGS[k].validate(v, source, f"{where}.training.{k}")
                  for k, v in settings.items()}
    if "target" in table:
        target = _check_keys(table["target"], set(evaluated), source, f"{where}.target")
        if len(target) != 1:
            raise BenchInputError(source, f"expected one metric, got {len(target)}",
                                  key=f"{where}.target", valid=", ".join(evaluated))
        ((metric, value),) = target.items()
        values["target"] = Setting(metric, float).validate(value, source,
                                                           f"{where}.target.{metric}")
        values["target_metric"] = metric
        values["higher_is_better"] = evaluated[metric]
    return TrainingRunSpec(**values)


_SERVING_SETTINGS = {
    "latency_bound_ms": Setting("latency_bound_ms", float, minimum=0, above_minimum=True,
                                help="server: the latency bound (LoadGen's target latency)"),
    "latency_percentile": Setting("latency_percentile", float, minimum=0.5, maximum=0.999,
                                  help="the percentile the bound applies to"),
    "server_qps": Setting("server_qps", float, minimum=0,
                          help="server: Poisson arrival rate (0: search the capacity)"),
    "max_wait_ms": Setting("max_wait_ms", float, minimum=0,
                           help="server: the dynamic batcher's longest wait for a batch"),
    "min_duration_s": Setting("min_duration_s", float, minimum=0, above_minimum=True,
                              maximum=MAX_TIMEOUT_S, help="LoadGen's minimum run duration"),
    "min_queries": Setting("min_queries", int, minimum=1, help="LoadGen's minimum queries"),
    "capacity_tolerance": Setting("capacity_tolerance", float, minimum=0.001, maximum=1.0,
                                  help="capacity search: stop when the bracket is this tight"),
    "max_probes": Setting("max_probes", int, minimum=2, maximum=64),
    "sample_count": Setting("sample_count", int, minimum=1,
                            help="LoadGen's query sample library size"),
    "ttft_bound_ms": Setting("ttft_bound_ms", float, minimum=0, above_minimum=True,
                             help="token serving (generate): the TTFT bound at "
                                  "latency_percentile"),
    "tpot_bound_ms": Setting("tpot_bound_ms", float, minimum=0, above_minimum=True,
                             help="token serving (generate): the TPOT bound at "
                                  "latency_percentile"),
}


def _load_serving(table: dict[str, Any], matrix: dict[str, tuple[Any, ...]], source: str,
                  where: str) -> ServingSpec | None:
    """``serving = { latency_bound_ms = 20, server_qps = 0, max_wait_ms = 1,
    min_duration_s = 1, min_queries = 64 }``: the LoadGen settings of a benchmark whose
    ``scenario`` axis names a LoadGen scenario (defaults without the table)."""
    scenarios = matrix.get("scenario")
    if scenarios is None:
        if "serving" in table:
            raise BenchInputError(source, "this workload has no scenario axis",
                                  key=f"{where}.serving",
                                  valid="a workload and phase with a scenario axis")
        return None
    settings = _check_keys(table.get("serving", {}), set(_SERVING_SETTINGS), source,
                           f"{where}.serving")
    values = {k: _SERVING_SETTINGS[k].validate(v, source, f"{where}.serving.{k}")
              for k, v in settings.items()}
    if all(s == CLOSED_LOOP for s in scenarios) and "serving" not in table:
        return None
    return ServingSpec(**values)


def _evaluated_workloads() -> list[str]:
    # On use: the same cycle as in _load_benchmark.
    from bench.workloads import get_workload, workload_names

    return [f"{n}/{p}" for n in workload_names() for p in get_workload(n).phases
            if get_workload(n).eval_metrics(p)]


def _load_slo(table: Any, source: str, where: str) -> dict[str, float]:
    """``slo = { p99_ms = 20, min_throughput = 500, min_speedup = 1.3 }``: positive,
    finite numbers (a parity at most 1)."""
    table = _check_keys(table, set(SLO_KEYS), source, where)
    slo = {}
    for key, value in table.items():
        slo[key] = Setting(key, float, minimum=0, above_minimum=True,
                           maximum=1.0 if key == "min_parity" else None).validate(
            value, source, f"{where}.{key}")
    return slo


def _user_model_table(table: dict[str, Any], source: str, where: str,
                      suite_folder: Path) -> dict[str, Any]:
    """``model = "module:function"`` -> the ``model`` workload with the factory in its params.
    The factory's module is looked up (never imported: user code runs in workers only)."""
    if "workload" in table:
        raise BenchInputError(source, "name either a workload or a model, not both",
                              key=f"{where}.model", valid=_FACTORY_FORMAT)
    if isinstance(table.get("model"), dict):
        return _checkpoint_table(table, source, where, suite_folder)
    factory = table.get("model")
    module, colon, function = factory.partition(":") if isinstance(factory, str) else ("", "", "")
    if not colon or not all(p.isidentifier() for p in [*module.split("."),
                                                        *function.split(".")]):
        raise BenchInputError(source, f"bad model {factory!r}", key=f"{where}.model",
                              valid=_FACTORY_FORMAT)
    python_path = table.get("python_path", ".")
    if not isinstance(python_path, str):
        raise BenchInputError(source, f"expected string, got {type(python_path).__name__}",
                              key=f"{where}.python_path", valid="a folder, relative to the "
                                                                 "suite file")
    folder = (suite_folder / python_path).resolve()
    if not folder.is_dir():
        raise BenchInputError(source, f"no folder {folder}", key=f"{where}.python_path",
                              valid="a folder, relative to the suite file")
    if not _module_exists(module, str(folder)):
        raise BenchInputError(source, f"module {module!r} not found in {folder} or on "
                              "sys.path", key=f"{where}.model", valid=_FACTORY_FORMAT)
    return _model_workload_table(table, source, where, module.rpartition(".")[2],
                                 {"factory": factory, "python_path": str(folder)})


def _model_workload_table(table: dict[str, Any], source: str, where: str, label: str,
                          model_params: dict[str, str], workload: str = USER_MODEL_WORKLOAD,
                          phase: str = "infer") -> dict[str, Any]:
    """The benchmark table of a user-model workload (``model``, or ``causal_lm`` for text
    generation): ``phase`` and ``label`` unless the table says otherwise, its params with
    the model's added."""
    params = table.get("params", {})
    if not isinstance(params, dict):
        raise BenchInputError(source, f"expected a table, got {type(params).__name__}",
                              key=f"{where}.params")
    rest = {k: v for k, v in table.items() if k not in ("model", "python_path")}
    return {"phase": phase, "label": label, **rest, "workload": workload,
            "params": {**params, **model_params}}


_CHECKPOINT_FORMAT = "{ hf = \"FOLDER\" (relative to the suite file), \"ORG/NAME\" (in the local " \
                     "Hugging Face cache) or \"package:NAME/SUB\", " \
                     "task = \"feature-extraction\" | \"sequence-classification\" | " \
                     "\"causal-lm\" | \"text-generation\" }, or { gguf = \"FILE.gguf\" }"
GENERATION_TASK = "text-generation"
GENERATION_WORKLOAD = "causal_lm"


# A Hugging Face model id (ORG/NAME), as huggingface_hub's validate_repo_id accepts them.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _hf_cache_snapshot(repo_id: str, source: str, key: str) -> Path:
    """The folder of ``repo_id`` in the local Hugging Face cache (``HF_HUB_CACHE``, else
    huggingface_hub's default), never downloaded: suites run offline."""
    require("hf", source, key)
    # huggingface_hub (~0.3 s) on use: only a suite naming a model id pays for it.
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except LocalEntryNotFoundError:
        raise BenchInputError(source, f"{repo_id} is not in the Hugging Face cache "
                              f"({cache}) and suites never download: fetch it once "
                              f"(hf download {repo_id}) or name its folder", key=key,
                              valid=_CHECKPOINT_FORMAT) from None


def _checkpoint_table(table: dict[str, Any], source: str, where: str,
                      suite_folder: Path) -> dict[str, Any]:
    """``model = { hf = ..., task = ... }``: a local Hugging Face checkpoint, found now."""
    spec = _check_keys(table["model"], {"hf", "task", "gguf"}, source, f"{where}.model")
    if "gguf" in spec:
        return _gguf_table(table, spec, source, where, suite_folder)
    hf, task = spec.get("hf"), spec.get("task", "feature-extraction")
    if not isinstance(hf, str) or not hf:
        raise BenchInputError(source, "missing checkpoint", key=f"{where}.model.hf",
                              valid=_CHECKPOINT_FORMAT)
    if hf.startswith(PACKAGE_PREFIX):
        name = hf[len(PACKAGE_PREFIX):].partition("/")[0]
        folder = package_folder(hf)
        if folder is None:
            raise BenchInputError(source, f"no installed package {name!r}",
                                  key=f"{where}.model.hf", valid=_CHECKPOINT_FORMAT)
        label = name
    elif not (suite_folder / hf).exists() and _REPO_ID.fullmatch(hf):
        folder = _hf_cache_snapshot(hf, source, f"{where}.model.hf")
        label = _label_of(hf.rpartition("/")[2], "hf")
        hf = str(folder)
    else:
        folder = (suite_folder / hf).resolve()
        hf = str(folder)
        label = _label_of(folder.name, "hf")
    if not (folder / "config.json").is_file():
        raise BenchInputError(source, f"no Hugging Face checkpoint (config.json) in {folder}",
                              key=f"{where}.model.hf", valid=_CHECKPOINT_FORMAT)
    if task == GENERATION_TASK:
        return _model_workload_table(table, source, where, label, {"source": hf},
                                     GENERATION_WORKLOAD, "generate")
    return _model_workload_table(table, source, where, label, {"hf": hf, "task": task})


def _gguf_table(table: dict[str, Any], spec: dict[str, Any], source: str, where: str,
                suite_folder: Path) -> dict[str, Any]:
    """``model = { gguf = "FILE.gguf" }``: a GGUF file's causal LM generating text."""
    gguf = spec["gguf"]
    if set(spec) - {"gguf", "task"} or spec.get("task", GENERATION_TASK) != GENERATION_TASK:
        raise BenchInputError(source, "a GGUF file is a causal LM generating text: give gguf "
                              "alone", key=f"{where}.model", valid=_CHECKPOINT_FORMAT)
    if not isinstance(gguf, str) or not gguf.endswith(".gguf"):
        raise BenchInputError(source, f"not a .gguf file: {gguf!r}", key=f"{where}.model.gguf",
                              valid=_CHECKPOINT_FORMAT)
    path = package_folder(gguf) if gguf.startswith(PACKAGE_PREFIX) else \
        (suite_folder / gguf).resolve()
    if path is None or not path.is_file():
        raise BenchInputError(source, f"no such file {path or gguf}", key=f"{where}.model.gguf",
                              valid=_CHECKPOINT_FORMAT)
    return _model_workload_table(table, source, where, _label_of(path.stem, "gguf"),
                                 {"source": str(path)}, GENERATION_WORKLOAD, "generate")


def _label_of(name: str, prefix: str) -> str:
    """A benchmark label from a file or folder name: letters, digits and underscores,
    starting with a letter (``prefix_`` put first where it would not)."""
    label = "".join(c if c.isalnum() else "_" for c in name) or prefix
    return label if label[0].isalpha() else f"{prefix}_{label}"


def _module_exists(name: str, folder: str) -> bool:
    """Whether ``name`` can be imported with ``folder`` first on the path, found without
    running it (a package's ``__init__`` is not executed either)."""
    top, *rest = name.split(".")
    spec = PathFinder.find_spec(top, [folder]) or importlib.util.find_spec(top)
    for part in rest:
        if spec is None or not spec.submodule_search_locations:
            return False
        spec = PathFinder.find_spec(part, list(spec.submodule_search_locations))
    return spec is not None


def _refuse_colliding_ids(benchmarks: tuple[BenchmarkSpec, ...], source: str) -> None:
    """Two benchmarks whose cases would share ids could not be told apart in results."""
    owner: dict[str, int] = {}
    for index, bench in enumerate(benchmarks):
        for case_id in benchmark_case_ids(bench):
            if case_id in owner:
                raise BenchInputError(
                    source, f"case {case_id} also comes from benchmark[{owner[case_id]}]",
                    key=f"benchmark[{index}].label",
                    valid="a distinct label, or different matrix axes")
            owner[case_id] = index


def _case_count(bench: BenchmarkSpec, max_cases: int) -> int:
    """How many cases the benchmark expands to; a product far past the limit is counted
    without building its combinations (a matrix of 10^12 is refused, not listed)."""
    bound = math.prod(len(v) for v in bench.matrix.values()) + sum(
        math.prod(len(entry.get(n, v)) for n, v in bench.matrix.items())
        for entry in bench.include)
    return bound if bound > 100 * max_cases else len(matrix_combinations(bench))


def load_suite(path: str | Path) -> SuiteSpec:
    """Parse and validate a suite file. Raises BenchInputError on any problem."""
    path = Path(path)
    text = read_bounded_text(path, "suite file", limit=16 * MIB)
    return suite_from_data(parse_toml(text, str(path)), str(path), path.stem,
                           hashlib.sha256(text.encode("utf-8")).hexdigest(),
                           path.resolve().parent)


def suite_from_data(data: Any, source: str, default_name: str, sha256: str,
                    folder: Path) -> SuiteSpec:
    """A suite from its parsed tables (a suite file's, or built by ``bench.run_model``);
    ``folder`` is where relative ``python_path`` values start."""
    _check_keys(data, _SUITE_KEYS, source, "")
    suite_table = _check_keys(data.get("suite", {}), _SUITE_TABLE_KEYS, source, "suite")
    budget = _load_budget(data.get("budget", {}), Budget(), source, "budget")
    benchmarks_raw = data.get("benchmark")
    if not isinstance(benchmarks_raw, list) or not benchmarks_raw:
        raise BenchInputError(source, "a suite needs at least one [[benchmark]] table",
                              key="benchmark")
    max_cases = Setting("max_cases", int, minimum=1).validate(
        suite_table.get("max_cases", DEFAULT_MAX_CASES), source, "suite.max_cases")
    benchmarks = tuple(_load_benchmark(table, i, budget, source, folder)
                       for i, table in enumerate(benchmarks_raw))
    cases = sum(_case_count(b, max_cases) for b in benchmarks)
    if cases > max_cases:
        raise BenchInputError(source, f"the matrices expand to {cases:,} cases, above the "
                              f"limit of {max_cases:,}; trim an axis or raise the limit",
                              key="suite.max_cases", valid=f"integer >= {cases}")
    _refuse_colliding_ids(benchmarks, source)
    paired_rounds = Setting("paired_rounds", int, minimum=0).validate(
        suite_table.get("paired_rounds", 0), source, "suite.paired_rounds")
    if paired_rounds == 1:
        raise BenchInputError(source, "one round has no spread: no CI", key="suite.paired_rounds",
                              valid="0 (off) or an integer >= 2")
    name = suite_table.get("name", default_name)
    description = suite_table.get("description", "")
    for key, value in (("suite.name", name), ("suite.description", description)):
        if not isinstance(value, str):
            raise BenchInputError(source, f"expected string, got {type(value).__name__}",
                                  key=key, valid="string")
    return SuiteSpec(name=name, path=source, description=description, benchmarks=benchmarks,
                     sha256=sha256, paired_rounds=paired_rounds)
