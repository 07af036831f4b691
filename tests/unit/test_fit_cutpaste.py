"""Smoke fit of the `cutpaste` baseline: the same checks as `cutswap`'s (see test_cutswap_fit.py)."""
from __future__ import annotations

import pytest
from test_fit_cutswap import check_smoke_fit, tiny_category  # tests/ is on sys.path (rootdir conftest)


@pytest.fixture(scope="module")
def category(demo_root):
    return tiny_category(demo_root)


def test_cutpaste_smoke_fit_is_finite_reproducible_and_roundtrips(category, tmp_path):
    check_smoke_fit("cutpaste", category, tmp_path)
