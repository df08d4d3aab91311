"""Sweeps fanned out: `bench run --shard K/N` splits a suite's cases by case id,
each shard from the scheduler's environment where it is not given, and `bench merge` puts
the shard files back together, refusing what does not belong and naming what is missing."""

from __future__ import annotations

import json

import pytest

from bench.cli import main
from bench.errors import BenchInputError
from bench.orchestrate.plan import plan_suite
from bench.spec import load_suite
from bench.spec.shards import Shard, parse_shard, shard_of
from tests.builders import sleep_suite


def _suite(write_suite, cases: int = 4, name: str = "suite.toml"):
    return write_suite(sleep_suite("sharded", cases), name)


def test_every_case_is_in_exactly_one_shard_and_the_assignment_is_stable():
    ids = [f"gpt/train[batch_size={b},seq_len={s}]" for b in (1, 2, 4, 8) for s in (64, 128)]
    for count in (1, 2, 3, 7):
        owners = [[k for k in range(count) if Shard(k, count).holds(cid)] for cid in ids]
        assert all(len(o) == 1 for o in owners)
    # Fixed by the case id alone: this value is what every machine and Python computes.
    assert shard_of("gpt/train[batch_size=1,seq_len=64]", 7) == shard_of(
        "gpt/train[batch_size=1,seq_len=64]", 7)
    assert {shard_of(cid, 2) for cid in ids} == {0, 1}


@pytest.mark.parametrize(("text", "env", "expected"), [
    ("1/4", {}, Shard(1, 4)),
    ("auto", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}, Shard(3, 4)),
    # --array=1-4: the first task is shard 0
    ("auto", {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1",
              "SLURM_ARRAY_TASK_COUNT": "4"}, Shard(3, 4)),
    ("/3", {"JOB_COMPLETION_INDEX": "2"}, Shard(2, 3)),
    ("0/", {"SLURM_ARRAY_TASK_COUNT": "5"}, Shard(0, 5)),
    (None, {"SLURM_ARRAY_TASK_ID": "1"}, None),
])
def test_shard_from_the_command_line_or_the_schedulers_environment(text, env, expected):
    assert parse_shard(text, env) == expected


def test_shard_alone_on_the_command_line_reads_the_scheduler(monkeypatch):
    from bench.cli import build_parser

    args = build_parser().parse_args(["run", "s.toml", "--shard"])
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    monkeypatch.delenv("SLURM_ARRAY_TASK_MIN", raising=False)
    assert parse_shard(args.shard) == Shard(2, 3)


@pytest.mark.parametrize(("text", "env", "message"), [
    ("2/2", {}, "is not a shard"),
    ("a/2", {}, "is not an integer"),
    ("auto", {}, "neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX"),
    ("auto", {"JOB_COMPLETION_INDEX": "0"}, "must give it: --shard /N"),
])
def test_bad_shards_are_refused_in_one_line(text, env, message):
    with pytest.raises(BenchInputError, match=message):
        parse_shard(text, env)


@pytest.mark.slow
def test_shards_merged_hold_exactly_the_suites_cases(write_suite, tmp_path, capsys):
    suite = _suite(write_suite)
    shards = [tmp_path / f"shard{k}.json" for k in range(2)]
    for k, out in enumerate(shards):
        assert main(["run", str(suite), "--shard", f"{k}/2", "--out", str(out), "--quiet",
                     "--no-progress"]) in (0, 1)
    planned = [p.case_id for p in plan_suite(load_suite(suite))]
    held = [{c["case_id"] for c in json.loads(s.read_text())["cases"]} for s in shards]
    assert held[0] and held[1] and not held[0] & held[1]

    merged = tmp_path / "merged.json"
    assert main(["merge", *map(str, reversed(shards)), "--out", str(merged)]) == 0
    data = json.loads(merged.read_text())
    assert [c["case_id"] for c in data["cases"]] == planned  # suite order, not file order
    assert [s["index"] for s in data["run"]["shards"]] == [0, 1]
    assert all(s["fingerprint"]["cpu"] for s in data["run"]["shards"])
    assert main(["report", str(merged)]) == 0

    # A missing shard: its cases are named from the suite file, and nothing is written.
    capsys.readouterr()
    partial = tmp_path / "partial.json"
    assert main(["merge", str(shards[0]), "--out", str(partial)]) == 1
    err = capsys.readouterr().err
    assert "shard 1/2 is missing" in err
    assert all(cid in err for cid in planned if cid not in held[0])
    assert not partial.exists()
    assert main(["merge", str(shards[0]), "--out", str(partial), "--partial"]) == 1
    assert partial.exists()

    # The same shard twice, or a shard of another suite version, is refused.
    assert main(["merge", str(shards[0]), str(shards[0]), "--out", str(partial)]) == 2
    assert "holds shard 0/2, as" in capsys.readouterr().err
    other = json.loads(shards[1].read_text())
    other["run"]["suite_sha256"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(["merge", str(shards[0]), str(tmp_path / "other.json"), "--out",
                 str(partial)]) == 2
    assert "suite hash" in capsys.readouterr().err

    # A cut-off shard (a case of its own list without a record) is named by that case.
    cut = json.loads(shards[1].read_text())
    lost = cut["cases"].pop()["case_id"]
    (tmp_path / "cut.json").write_text(json.dumps(cut))
    assert main(["merge", str(shards[0]), str(tmp_path / "cut.json"), "--out",
                 str(partial)]) == 1
    assert f"1 cases have no record: {lost}" in capsys.readouterr().err

    # Shards measured on unlike machines are refused unless asked.
    other = json.loads(shards[1].read_text())
    other["fingerprint"]["cpu"]["model"] = "Another CPU"
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(["merge", str(shards[0]), str(tmp_path / "other.json"), "--out",
                 str(partial)]) == 2
    assert "different machine" in capsys.readouterr().err
    assert main(["merge", str(shards[0]), str(tmp_path / "other.json"), "--out",
                 str(partial), "--allow-different-machines"]) == 0

    # Resuming a shard file as another shard would mix their cases.
    assert main(["run", str(suite), "--shard", "1/2", "--out", str(shards[0]), "--resume",
                 "--quiet", "--no-progress"]) == 2
    assert "holds shard 0/2, not shard 1/2" in capsys.readouterr().err
