"""The built-in suites live in suites/ at the top of the repository (where users and CI
name them) and install as bench/suites/, package data of ``bench``: a mapping pyproject.toml
cannot state next to automatic package discovery. Everything else is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

setup(packages=[*find_namespace_packages(include=["bench", "bench.*"], exclude=["*__pycache__"]),
                "bench.suites"],
      package_dir={"bench.suites": "suites"})
