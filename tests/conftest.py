"""Test-session settings: one shared cache, results never written into the checkout."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_results(tmp_path_factory):
    # The in-domain feature encoder (memstudy.quality) is cached by content: train it once
    # per test session rather than once per test.
    os.environ.setdefault("MEMSTUDY_CACHE", str(tmp_path_factory.mktemp("cache")))
    os.environ.setdefault("MEMSTUDY_RESULTS", str(tmp_path_factory.mktemp("results")))
    yield
