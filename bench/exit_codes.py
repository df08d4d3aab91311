"""The exit codes of every bench command, named once (no imports: safe anywhere).

README's table is ``exit_code_table()``'s; tests/doors/test_exit_codes.py runs each code.
"""

OK = 0
FAILED = 1  # a case failed, a target or SLO was missed, a regression, no answer found
BAD_INPUT = 2  # a suite, file or option refused (one line naming it), argparse's usage too
NO_VERDICT = 3  # bench gate / ab: only speed left undecided by the host's noise
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT): finished cases are saved
TERMINATED = 143  # SIGTERM (128 + SIGTERM), a CI runner cancelling: likewise

MEANINGS: tuple[tuple[int, str], ...] = (
    (OK, "done: every case measured, every target and SLO met, no regression"),
    (FAILED, "bench run: a case ended error, crashed, timeout, oom or diverged, or missed "
             "its accuracy target, an SLO or its time-to-accuracy target (not_converged; "
             "--allow-missed-targets: figures only, these three do not fail); "
             "bench gate / ab: a regression, or a figure that cannot be judged (missing, "
             "non-finite, too few trials); bench max-batch: a search that ended on an "
             "error, not a limit; bench merge: missing shards or cases"),
    (BAD_INPUT, "bad input: a suite, run file, option or model refused in one line naming "
                "the file, key and valid values"),
    (NO_VERDICT, "bench gate / ab: nothing failed, but the host was too noisy to decide "
                 "speed (contention, spread): rerun on a quieter machine"),
    (INTERRUPTED, "interrupted (Ctrl-C): finished cases are saved; bench run --resume "
                  "goes on"),
    (TERMINATED, "terminated (SIGTERM): as for Ctrl-C"),
)


def exit_code_table() -> str:
    """The codes as a markdown table (README's)."""
    rows = "".join(f"| {code} | {meaning} |\n" for code, meaning in MEANINGS)
    return "| exit code | meaning |\n|---|---|\n" + rows
