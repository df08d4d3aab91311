"""The store of a hyperparameter search: Optuna's journal file (one append-only file that
several processes, and machines sharing a file system, write one study's trials to)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def open_journal(path: str | Path) -> Any:
    """Optuna's JournalStorage over the file at ``path`` (created on first write)."""
    import optuna  # on use: bench tune and tune-report only

    return optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(path)))
