"""Error analysis of a classification case: the confusion matrix and per-class precision,
recall and F1 (scikit-learn's metrics), and the summary metrics derived from them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bench.results.schema import ClassReport

METHOD = ("sklearn.metrics.confusion_matrix and precision_recall_fscore_support "
          "(zero_division=0) over the validation set; rows: true class, columns: predicted")


def class_report(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                 labels: Sequence[str]) -> ClassReport:
    """Per-class figures of predictions ``y_pred`` (class indices) against ``y_true``."""
    from sklearn.metrics import (  # scipy kept out of the sweep's start-up
        confusion_matrix,
        precision_recall_fscore_support,
    )

    index = list(range(len(labels)))
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=index, zero_division=0)
    return ClassReport(
        labels=[str(label) for label in labels],
        confusion=confusion_matrix(y_true, y_pred, labels=index).tolist(),
        precision=[float(v) for v in precision], recall=[float(v) for v in recall],
        f1=[float(v) for v in f1], support=[int(v) for v in support], method=METHOD)


def pooled(reports: list[ClassReport]) -> ClassReport:
    """One report over several runs (seeds) of the same classifier: their confusion
    matrices summed, the per-class figures computed from the sum."""
    first = reports[0]
    total = np.sum([np.asarray(r.confusion) for r in reports], axis=0)
    true_idx, pred_idx = np.nonzero(total)
    counts = total[true_idx, pred_idx]
    report = class_report(np.repeat(true_idx, counts), np.repeat(pred_idx, counts), first.labels)
    report.method = f"{METHOD}; confusion matrices of {len(reports)} runs summed"
    return report


def summary_metrics(report: ClassReport, minority: Sequence[int] = ()) -> dict[str, float]:
    """Balanced accuracy (mean recall), macro-F1 and, given minority class indices, their
    mean recall."""
    metrics = {"balanced_accuracy": float(np.mean(report.recall)),
               "macro_f1": float(np.mean(report.f1))}
    if minority:
        metrics["minority_recall"] = float(np.mean([report.recall[i] for i in minority]))
    return metrics
