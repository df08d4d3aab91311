"""The distribution: its extras and bench.extras agree, one version source, the built-in
suites and the LICENSE in the wheel, a missing extra named in one line, a suite named by
its name. tools/install_check.py installs the wheel in fresh virtual environments."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import bench
from bench import extras
from bench.cli import main
from bench.errors import BenchInputError
from bench.orchestrate.plan import plan_suite
from bench.spec import load_suite
from bench.spec.builtin import builtin_suites_dir, resolve_suite

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_extras_of_pyproject_are_those_bench_names_in_its_errors():
    optional = PYPROJECT["project"]["optional-dependencies"]
    features = set(optional) - {"all", "test"}
    assert features == set(extras.EXTRAS)
    assert optional["all"] == [f"{extras.DISTRIBUTION}[{','.join(extras.EXTRAS)}]"]
    assert PYPROJECT["project"]["name"] == extras.DISTRIBUTION


def test_one_version_source_and_a_license():
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert "version" not in PYPROJECT["project"]
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "bench.__version__" and re.fullmatch(r"\d+\.\d+\.\d+", bench.__version__)
    assert "Apache License" in (REPO / "LICENSE").read_text()[:200]


def test_torch_lower_bound_has_the_fsdp2_api():
    assert "torch>=2.6" in PYPROJECT["project"]["dependencies"]  # fully_shard public


@pytest.mark.slow
def test_the_wheel_ships_every_builtin_suite_and_the_license(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", str(REPO), "-w", str(tmp_path)],
                   check=True, capture_output=True, cwd=tmp_path)
    wheel, = tmp_path.glob("bench_suite-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {Path(n).name for n in names if n.startswith("bench/suites/")}
    assert shipped == {p.name for p in (REPO / "suites").glob("*.toml")}
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert "bench/workloads/data/minilm_pairs.tsv" in names
    assert not any("__pycache__" in n for n in names)


def test_a_case_whose_extra_is_absent_is_skipped_with_the_install_line(monkeypatch):
    monkeypatch.setitem(extras.EXTRAS, "serving", ("LoadGen", ("no_such_module_here",)))
    planned = plan_suite(load_suite(REPO / "suites" / "serving.toml"))
    assert planned and all(p.skip_reason and "pip install 'bench-suite[serving]'"
                           in p.skip_reason for p in planned)
    closed = plan_suite(load_suite(REPO / "suites" / "quick.toml"))
    assert not any(extras.is_missing_extra(p.skip_reason) for p in closed)


def test_running_a_suite_that_needs_an_absent_extra_is_one_line(monkeypatch, tmp_path,
                                                                 capsys):
    monkeypatch.setitem(extras.EXTRAS, "serving", ("LoadGen", ("no_such_module_here",)))
    code = main(["run", str(REPO / "suites" / "serving.toml"), "--out",
                 str(tmp_path / "s.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "none of its 24 cases can run here" in err
    assert "pip install 'bench-suite[serving]'" in err
    assert not (tmp_path / "s.json").exists()


def test_a_command_that_needs_an_absent_extra_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(extras.EXTRAS, "tune", ("bench tune", ("no_such_module_here",)))
    assert main(["tune", str(REPO / "suites" / "tune.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'bench-suite[tune]'" in err


def test_a_suite_is_named_by_its_name(monkeypatch, tmp_path):
    assert builtin_suites_dir() == REPO / "suites"
    monkeypatch.chdir(tmp_path)
    assert resolve_suite("quick") == str(REPO / "suites" / "quick.toml")
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "quick.toml").write_text("")
    assert resolve_suite("quick") == "suites/quick.toml"  # the user's own shadows ours
    assert resolve_suite("other/x.toml") == "other/x.toml"  # a path stays a path
    with pytest.raises(BenchInputError, match="valid: .*smoke"):
        resolve_suite("no-such-suite")
