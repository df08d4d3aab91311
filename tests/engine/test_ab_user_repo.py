"""Issue 30: bench ab on the user's own code. --baseline-ref checks out the repository that
holds the suite and the model (the user's), and this bench measures both commits: a commit
that made the model slower is flagged, one that left it alone is not, and the same commit on
both sides is refused as a comparison of the code with itself."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

MODEL = textwrap.dedent('''\
    import time

    import torch

    from bench import UserModel

    DELAY_S = {delay}


    def build() -> UserModel:
        model = torch.nn.Linear(16, 4).eval()
        if DELAY_S:
            model.register_forward_hook(lambda *_: time.sleep(DELAY_S))
        return UserModel(model, lambda batch, seed: (
            torch.randn(batch, 16, generator=torch.Generator().manual_seed(seed)),))
''')
SUITE = textwrap.dedent('''\
    [budget]
    min_trials = 4
    max_time_s = 0.2
    trial_time_s = 0.02

    [[benchmark]]
    model = "models:build"
    matrix = { batch_size = [4] }
''')


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def _commit(repo: Path, message: str, files: dict[str, str]) -> None:
    for name, text in files.items():
        (repo / name).write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=u", "-c", "user.email=u@example.com", "commit", "-qm", message)


def _ab(repo: Path, out: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", "ab", "suite.toml", "--baseline-ref",
                           "HEAD~1", "--max-rounds", "4", "--time-budget", "40", "--out", out,
                           "--no-progress"], cwd=repo, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.heavy
@pytest.mark.alone
@pytest.mark.slow
def test_ab_of_two_commits_of_a_users_repository_flags_the_slowed_model(tmp_path):
    repo = tmp_path / "project"
    repo.mkdir()
    _git(repo, "init", "-q")
    _commit(repo, "a model", {"models.py": MODEL.format(delay=0), "suite.toml": SUITE})
    _commit(repo, "docs only", {"README.md": "my model\n"})
    unchanged = _ab(repo, "ab-unchanged")
    assert unchanged.returncode in (0, 3), unchanged.stdout + unchanged.stderr
    assert "| regression |" not in unchanged.stdout
    sides = [json.loads((repo / "ab-unchanged" / f"{s}.json").read_text())["run"]["pairing"]
             for s in ("baseline", "current")]
    assert sides[0]["suite_commit"] != sides[1]["suite_commit"]
    assert sides[0]["source"] == sides[1]["source"]  # one bench measured both commits
    assert Path(sides[0]["suite"]).parent != repo  # the baseline read its own checkout

    _commit(repo, "slower", {"models.py": MODEL.format(delay=0.002)})
    slowed = _ab(repo, "ab-slowed")
    # 2 ms more per step on a ~10 us step: a regression, or no verdict (exit 3) where every
    # round was contended (the host's load, never a pass).
    assert slowed.returncode in (1, 3), slowed.stdout + slowed.stderr
    if slowed.returncode == 1:
        assert "| regression |" in slowed.stdout
    else:
        assert "contended" in slowed.stdout

    same = subprocess.run([sys.executable, "-m", "bench", "ab", "suite.toml", "--baseline-ref",
                           "HEAD", "--out", "ab-same", "--no-progress"],
                          cwd=repo, capture_output=True, text=True, timeout=600)
    assert same.returncode == 2 and "compare the code with itself" in same.stderr
    assert not (repo / "ab-same").exists()  # refused before measuring
