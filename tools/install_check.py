"""Install bench as a user would, outside this repository, and use it (make install-check).

    python tools/install_check.py [--keep]

1. Builds the wheel of this checkout (HEAD's working tree).
2. A fresh virtual environment with every extra: ``pip install 'WHEEL[all]' -c
   constraints.txt``; then, in an empty folder, ``bench list`` (the built-in suites),
   ``bench run quick --out q.json``, ``bench report q.json``, ``bench show q.json``.
3. A fresh virtual environment with no extra: ``pip install WHEEL``; ``bench run serving``
   must end in one line naming the extra (exit code 2).

Each step's command, exit code and wall time is printed; exit 0 when all hold. Needs the
package index (or this workplace's wheel folders) for the dependencies.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def step(label: str, command: list[str], cwd: Path, expect: int = 0) -> str:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    verdict = "ok" if done.returncode == expect else "FAILED"
    print(f"[{verdict}] {label}: exit {done.returncode} (expected {expect}) in {wall:.0f} s",
          flush=True)
    if done.returncode != expect:
        print(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(1)
    return done.stdout + done.stderr


def venv(folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    return folder / "bin"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-install-"))
    try:
        step("build the wheel", [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                                 str(REPO), "-w", str(root / "dist")], root)
        wheel, = (root / "dist").glob("bench_suite-*.whl")
        constraints = ["-c", str(REPO / "constraints.txt")]

        full = venv(root / "venv-all")
        step("pip install WHEEL[all]", [str(full / "pip"), "install", "-q", *constraints,
                                        f"{wheel}[all]"], root)
        work = root / "user"
        work.mkdir()
        listing = step("bench list", [str(full / "bench"), "list"], work)
        builtin = [line.split()[0] for line in listing.splitlines() if "(built-in)" in line]
        print(f"       built-in suites listed: {', '.join(builtin)}")
        if "quick" not in builtin:
            print("bench list shows no built-in quick suite")
            return 1
        step("bench run quick --out q.json", [str(full / "bench"), "run", "quick", "--out",
                                              "q.json", "--quiet", "--no-progress"], work)
        step("bench report q.json", [str(full / "bench"), "report", "q.json"], work)
        step("bench show q.json", [str(full / "bench"), "show", "q.json"], work)

        bare = venv(root / "venv-bare")
        step("pip install WHEEL (no extras)", [str(bare / "pip"), "install", "-q",
                                              *constraints, str(wheel)], root)
        said = step("bench run serving (no serving extra)",
                    [str(bare / "bench"), "run", "serving", "--out", "s.json"], work, expect=2)
        lines = [line for line in said.splitlines() if line.strip()]
        print(f"       {lines[-1] if lines else '(nothing said)'}")
        if len(lines) != 1 or "bench-suite[serving]" not in lines[0]:
            print("expected one line naming the serving extra")
            return 1
        print("install check: all steps held")
        return 0
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
