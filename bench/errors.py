"""Errors that reach the user as one line and exit code 2, never a traceback."""

from __future__ import annotations


class BenchInputError(Exception):
    """Bad input: a suite file, a result file or a command-line value.

    Rendered as ``FILE: KEY: problem (valid: ...)`` on one line.
    """

    def __init__(self, source: str, problem: str, key: str | None = None,
                 valid: object | None = None) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        self.valid = valid
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = [str(self.source)]
        if self.key:
            parts.append(self.key)
        message = ": ".join(parts) + f": {self.problem}"
        if self.valid is not None:
            valid = self.valid
            if isinstance(valid, list | tuple | set | frozenset):
                valid = ", ".join(str(v) for v in sorted(valid, key=str))
            message += f" (valid: {valid})"
        return message.replace("\n", " ")
