"""A seeded mutator over suite files and result files.

1,000 suite mutants go through the loader (and the expansion); result mutants through
``bench report``, ``bench compare`` and ``bench gate`` (every fifth through ``bench report
--html`` too): 150 in ``make test``, 1,000 more (another seed) in ``make test-heavy``.
Nothing may end in a traceback, and no mutant that is slower, non-finite where the gate
reads, or malformed may pass the gate. Run with ``-s`` to see the counts.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
from collections import Counter
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import BenchInputError
from bench.results.schema import SCHEMA_VERSION
from bench.results.store import json_safe
from bench.spec import expand_suite, load_suite
from tests.builders import case, run, trials

REPO = Path(__file__).resolve().parents[2]
SUITE_MUTANTS = 1000
# Each result mutant goes through four commands (~50 ms, ~100 ms beside another test):
# a few in make test, the full count in make test-heavy; BENCH_FUZZ_RESULT_MUTANTS=5000
# searches deeper there.
QUICK_RESULT_MUTANTS = 150
RESULT_MUTANTS = int(os.environ.get("BENCH_FUZZ_RESULT_MUTANTS", "1000"))

SPECIAL_VALUES = ["nan", "inf", "-inf", "0", "-1", "1e308", "99999999999999999999", '"x"',
                  "true", "[]", "{}", "[[]]", '""', "0.0", "-0.0", "1e-320", '"nan"',
                  "[1, [2, [3]]]", "{ a = 1 }", "3.5", "2"]


def _mutate_suite(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(8)
        i = rng.randrange(len(lines)) if lines else 0
        if kind == 0 and lines:
            del lines[i]
        elif kind == 1 and lines:
            lines.insert(i, lines[i])
        elif kind == 2 and lines and "=" in lines[i]:  # a key gets a hostile value
            key = lines[i].split("=", 1)[0]
            lines[i] = f"{key}= {rng.choice(SPECIAL_VALUES)}"
        elif kind == 3 and lines and "=" in lines[i]:  # an unknown or misspelt key
            lines[i] = rng.choice(["bogus", "min_trial", "workload2", "matrix.x"]) + \
                "=" + lines[i].split("=", 1)[1]
        elif kind == 4:  # a matrix axis with many values or odd ones
            values = ", ".join(str(v) for v in range(rng.choice([0, 1, 5, 200])))
            lines.insert(i, f"matrix = {{ batch_size = [{values}] }}")
        elif kind == 5:
            depth = rng.choice([5, 100, 600])
            lines.insert(i, "x = " + "[" * depth + "]" * depth)
        elif kind == 6 and lines:  # truncate a line
            lines[i] = lines[i][:rng.randrange(len(lines[i]) + 1)]
        else:  # bytes that are not TOML, or not UTF-8
            lines.insert(i, rng.choice(["\x00\x01", "[[[", "= =", "\ufffe", "é = 1"]))
    return "\n".join(lines) + "\n"


def test_suite_mutants_never_end_in_a_traceback(tmp_path):
    seeds = [p.read_text() for p in sorted((REPO / "suites").glob("*.toml"))]
    rng = random.Random(2026)
    outcomes: Counter[str] = Counter()
    tracebacks = []
    for i in range(SUITE_MUTANTS):
        path = tmp_path / f"m{i % 10}.toml"
        text = _mutate_suite(rng.choice(seeds), rng)
        path.write_bytes(text.encode("utf-8", errors="surrogatepass") if rng.random() < 0.9
                         else text.encode("utf-16"))
        try:
            suite = load_suite(path)
            if sum(math.prod(len(v) for v in b.matrix.values())
                   for b in suite.benchmarks) <= 500:
                expand_suite(suite)
            outcomes["accepted"] += 1
        except BenchInputError as exc:
            assert "\n" not in exc.one_line()
            outcomes["refused in one line"] += 1
        except Exception as exc:  # noqa: BLE001 - that is what the test counts
            tracebacks.append(f"{type(exc).__name__}: {exc} <- {text[:300]!r}")
    print(f"\nsuite mutants: {SUITE_MUTANTS}: {dict(outcomes)}, tracebacks {len(tracebacks)}")
    assert not tracebacks, tracebacks[:3]
    assert outcomes["refused in one line"] > SUITE_MUTANTS // 4  # the mutator bites


# ----- result files ----------------------------------------------------------------------

def _baseline() -> dict:
    record = run(case("w/infer[a=1]", trials(0.1, seed=1)),
                 case("w/infer[a=2]", trials(0.2, seed=3), accuracy=0.8),
                 case("w/infer[a=3]", None, status="error"))
    return json.loads(json.dumps(json_safe(record.to_dict())))


def _current() -> dict:
    record = run(case("w/infer[a=1]", trials(0.1, seed=2)),
                 case("w/infer[a=2]", trials(0.2, seed=4), accuracy=0.8),
                 case("w/infer[a=3]", None, status="error"))
    return json.loads(json.dumps(json_safe(record.to_dict())))


def _leaves(node, path=()):  # noqa: ANN001, ANN202
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, i))
    else:
        yield path


def _set(data, path, value) -> None:  # noqa: ANN001
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def _gated_number(target: dict, rng: random.Random) -> tuple:
    """A path to a figure the gate reads in a measured case."""
    t = target["timing"]
    return rng.choice([
        ("timing", "trial_means_s", rng.randrange(len(t["trial_means_s"]))),
        ("timing", "median_s"),
        ("timing", "trial_samples_s", rng.randrange(len(t["trial_samples_s"])), 0),
        ("memory", "peak_rss_mib"),
        ("accuracy", "metrics", target["accuracy"]["task_metric"]),
    ])


TYPED_FIELDS = [("case_id",), ("status",), ("timing", "median_s"),
                ("timing", "trial_means_s"), ("timing", "trial_samples_s"),
                ("timing", "iters_per_trial"), ("memory", "peak_rss_mib"),
                ("accuracy", "metrics"), ("accuracy", "passed"), ("timing",), ("memory",)]
WRONG_TYPES = ["abc", [1, 2], {"a": 1}, True, "nan-ish", [[["deep"]]], 3 + 0j]


def _mutant(rng: random.Random, data: dict) -> tuple[str, bytes, dict | None]:
    """(class, file bytes, parsed JSON or None) from a copy of ``data``. Classes that must
    never pass the gate: slower, nonfinite, malformed; 'neutral' ones may pass but must
    not traceback."""
    kind = rng.choice(["slower", "nonfinite", "malformed", "malformed", "structure",
                       "neutral"])
    measured = [c for c in data["cases"] if c["status"] == "ok"]
    target = rng.choice(measured)
    if kind == "slower":
        factor = rng.choice([1.5, 2.0, 10.0])
        t = target["timing"]
        t["trial_means_s"] = [v * factor for v in t["trial_means_s"]]
        t["trial_samples_s"] = [[v * factor for v in s] for s in t["trial_samples_s"]]
        t["median_s"] *= factor
        t["mean_s"] *= factor
        if rng.random() < 0.5:  # and keep only a few trials
            keep = rng.choice([1, 2, 3])
            t["trial_means_s"] = t["trial_means_s"][:keep]
            t["trial_samples_s"] = t["trial_samples_s"][:keep]
    elif kind == "nonfinite":
        path = _gated_number(target, rng)
        value = rng.choice(["nan", "inf", "-inf", "NaN", "Infinity"])
        _set(target, path, value)
    elif kind == "malformed":
        path = rng.choice(TYPED_FIELDS)
        value = rng.choice([v for v in WRONG_TYPES
                            if not (path[-1] == "passed" and isinstance(v, bool))])
        if isinstance(value, complex):
            return kind, b'{"schema": "bench.run", "schema_version": 2, "run": ' + \
                b'{"x": 1e999999}}', None
        _set(target, path, value)
    elif kind == "structure":
        choice = rng.randrange(6)
        if choice == 0:
            del target[rng.choice(["case_id", "status", "workload", "axes"])]
        elif choice == 1:
            target[rng.choice(["timing", "memory"])]["surprise"] = 1
        elif choice == 2:
            v = SCHEMA_VERSION
            data["schema_version"] = rng.choice([True, 1.0, str(v), 0, v + 1, None, [v]])
        elif choice == 3:
            data["fingerprint"][rng.choice(["cpu", "packages", "threads", "gpus"])] = \
                rng.choice(["x", 1, [1]])
        elif choice == 4:
            target["status"] = rng.choice(["OK", "unknown", "", "passed"])
        else:
            raw = json.dumps(data).encode()
            cut = rng.randrange(len(raw))
            return kind, raw[:cut] + rng.choice([b"", b"\xff\xfe", b"\x00", b"}}}"]), None
    else:  # anything anywhere, including free-form fields: must only never traceback
        path = rng.choice(list(_leaves(data)))
        _set(data, path, rng.choice([*WRONG_TYPES[:-1], None, "nan", -1, 0, 1e308]))
    return kind, json.dumps(data).encode(), data


def _cli(args: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(args)


# A real run (every figure, model and compute record a bench run writes) beside the
# synthetic pair; its baseline is itself.
REAL_RUN = REPO / "results" / "baselines" / "smoke-cpu-avx512-xeon-2core.json"


def test_result_mutants_never_traceback_and_never_pass_when_bad(tmp_path):
    _result_mutants(tmp_path, QUICK_RESULT_MUTANTS, seed=11)


@pytest.mark.heavy
def test_many_more_result_mutants_never_traceback_and_never_pass_when_bad(tmp_path):
    _result_mutants(tmp_path, RESULT_MUTANTS, seed=12)


def _result_mutants(tmp_path: Path, mutants: int, seed: int) -> None:
    rng = random.Random(seed)
    synthetic = tmp_path / "base.json"
    synthetic.write_text(json.dumps(_baseline()))
    real = json.loads(REAL_RUN.read_text())
    for base in (synthetic, REAL_RUN):
        assert _cli(["gate", "--baseline", str(base), "--current", str(base)]) == 0
    counts: Counter[str] = Counter()
    passes_when_bad, tracebacks = [], []
    for i in range(mutants):
        use_real = i % 3 == 0
        base = REAL_RUN if use_real else synthetic
        kind, raw, _ = _mutant(rng, json.loads(json.dumps(real)) if use_real else _current())
        path = tmp_path / f"m{i % 10}.json"
        path.write_bytes(raw)
        codes = {}
        html = [("html", ["report", str(path), "--html", str(tmp_path / "r.html")])]
        with_html = i % 30 == 0 if use_real else i % 5 == 0
        for name, args in (*(html if with_html else ()), ("report", ["report", str(path)]),
                           ("compare", ["compare", str(base), str(path)]),
                           ("gate", ["gate", "--baseline", str(base), "--current",
                                     str(path)])):
            try:
                codes[name] = _cli(args)
            except Exception as exc:  # noqa: BLE001 - that is what the test counts
                tracebacks.append(f"{name} on {kind}: {type(exc).__name__}: {exc}")
        counts[f"{kind}: gate exit {codes.get('gate')}"] += 1
        if kind != "neutral" and codes.get("gate") == 0:
            passes_when_bad.append(f"{kind}: {raw[:400]!r}")
    print(f"\nresult mutants: {mutants}: {dict(sorted(counts.items()))}; "
          f"tracebacks {len(tracebacks)}; bad files passed {len(passes_when_bad)}")
    assert not tracebacks, tracebacks[:3]
    assert not passes_when_bad, passes_when_bad[:2]


@pytest.mark.parametrize("field, cut", [("recall", 1), ("support", 3), ("confusion", 1)])
def test_a_class_report_shorter_than_its_labels_is_refused_in_one_line(tmp_path, capsys,
                                                                       field, cut):
    """Before: the gate's class-drop check zipped the lists and a short one ended in a
    ValueError traceback."""
    with_classes = REPO / "results" / "baselines" / "smoke-cpu-avx512-epyc-2core.json"
    data = json.loads(with_classes.read_text())
    target = next(c for c in data["cases"] if c.get("classes"))
    target["classes"][field] = target["classes"][field][:-cut]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    assert main(["gate", "--baseline", str(with_classes), "--current", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"classes.{field}" in err and "\n" not in err and "Traceback" not in err
