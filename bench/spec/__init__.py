"""Suite files -> validated specs -> expanded cases."""

from bench.spec.expand import expand_suite
from bench.spec.loader import load_suite
from bench.spec.model import Budget, CaseSpec, SuiteSpec

__all__ = ["Budget", "CaseSpec", "SuiteSpec", "expand_suite", "load_suite"]
