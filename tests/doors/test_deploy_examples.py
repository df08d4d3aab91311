"""The deployment files users copy: the Kubernetes manifests validate against
the Kubernetes API schema (kubernetes-validate, strict: an unknown field fails), ask for
Guaranteed QoS and one pod per node; the SLURM scripts parse and name only sbatch
options; and the sweep commands in them, run here with the scheduler's variables set,
shard a suite that bench merge puts back together. (The multi-node script's torchrun
command runs in tests/engine/test_parallel.py as two simulated nodes.)"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders import REPO, sleep_suite

kubernetes_validate = pytest.importorskip("kubernetes_validate")
yaml = pytest.importorskip("yaml")

KUBERNETES = sorted((REPO / "examples" / "kubernetes").glob("*.yaml"))
SLURM = sorted((REPO / "examples" / "slurm").glob("*"))
BENCH = str(Path(sys.executable).parent / "bench")

# sbatch's long options these scripts may use (sbatch(1)); a typo is not an option.
SBATCH_OPTIONS = {
    "job-name", "array", "nodes", "ntasks", "ntasks-per-node", "cpus-per-task", "exclusive",
    "time", "output", "error", "requeue", "gpus-per-node", "gres", "mem", "partition",
    "account", "dependency", "constraint", "export", "signal", "open-mode",
}

TINY_SUITE = sleep_suite("tiny", 3)


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", KUBERNETES, ids=lambda p: p.name)
def test_kubernetes_manifests_validate_against_the_api_schema(path):
    version = kubernetes_validate.latest_version()
    for doc in _documents(path):
        kubernetes_validate.validate(doc, version, strict=True)
        # The validator can fail: a misspelt field of the same document is refused.
        broken = copy.deepcopy(doc)
        broken["spec"]["completionsMode"] = "Indexed"
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, version, strict=True)


def _pod_specs(path: Path) -> list[dict]:
    return [d["spec"]["template"]["spec"] for d in _documents(path) if d["kind"] == "Job"]


@pytest.mark.parametrize("path", KUBERNETES, ids=lambda p: p.name)
def test_kubernetes_pods_are_guaranteed_qos_and_one_per_node(path):
    for doc in _documents(path):
        if doc["kind"] != "Job":
            continue
        pod = doc["spec"]["template"]["spec"]
        for container in pod["containers"]:
            resources = container["resources"]
            assert resources["requests"] == resources["limits"]  # Guaranteed QoS
            assert {"cpu", "memory"} <= set(resources["limits"])
        if doc["spec"].get("parallelism", 1) > 1:  # two timed pods never share a node
            term, = pod["affinity"]["podAntiAffinity"][
                "requiredDuringSchedulingIgnoredDuringExecution"]
            assert term["topologyKey"] == "kubernetes.io/hostname"
            assert term["labelSelector"]["matchLabels"].items() <= \
                doc["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("path", SLURM, ids=lambda p: p.name)
def test_slurm_scripts_parse_and_name_only_sbatch_options(path):
    subprocess.run(["bash", "-n", str(path)], check=True)
    for line in path.read_text().splitlines():
        if line.startswith("#SBATCH"):
            option = re.fullmatch(r"#SBATCH --([a-z-]+)(=\S+)?", line)
            assert option and option.group(1) in SBATCH_OPTIONS, line


def _run(command: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(command, env={**os.environ, "BENCH": BENCH, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stderr


@pytest.mark.heavy
@pytest.mark.slow
def test_the_slurm_array_and_its_merge_run_with_slurms_variables(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY_SUITE)
    env = {"SUITE": "tiny.toml", "OUT_DIR": "shards", "MERGED": "merged.json",
           "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "0"}
    for task in ("0", "1"):
        _run(["bash", str(REPO / "examples/slurm/sweep-array.sbatch")],
             {**env, "SLURM_ARRAY_TASK_ID": task}, tmp_path)
    _run(["bash", str(REPO / "examples/slurm/merge.sbatch")], env, tmp_path)
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert sorted(c["case_id"] for c in merged["cases"]) == [
        f"sleep/infer:s{i}[]" for i in range(1, 4)]
    assert [s["index"] for s in merged["run"]["shards"]] == [0, 1]


@pytest.mark.heavy
@pytest.mark.slow
def test_the_kubernetes_indexed_job_commands_run_with_its_completion_index(tmp_path):
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "quick.toml").write_text(TINY_SUITE)  # as the image's suite
    (tmp_path / "results" / "shards").mkdir(parents=True)
    sweep, = _pod_specs(REPO / "examples/kubernetes/sweep-indexed-job.yaml")
    merge, = _pod_specs(REPO / "examples/kubernetes/merge-job.yaml")
    completions = _documents(REPO / "examples/kubernetes/sweep-indexed-job.yaml")[0][
        "spec"]["completions"]

    def command(pod: dict) -> list[str]:
        container, = pod["containers"]
        text = " ".join(container["args"]).replace("/results", str(tmp_path / "results"))
        return [*container["command"], text.replace("bench ", f"{BENCH} ")]

    for index in range(completions):
        _run(command(sweep), {"JOB_COMPLETION_INDEX": str(index)}, tmp_path)
    _run(command(merge), {}, tmp_path)
    merged = json.loads((tmp_path / "results" / "quick.json").read_text())
    assert len(merged["cases"]) == 3
    assert [s["index"] for s in merged["run"]["shards"]] == list(range(completions))
