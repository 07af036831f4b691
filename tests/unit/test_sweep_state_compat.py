"""A sweep interrupted under an older package layout: Tune pickled module paths into its state,
so `--resume` reads those paths first and refuses, saying why, instead of failing mid-unpickle."""
from __future__ import annotations

import pickle

import pytest

from raybench.errors import ConfigError
from raybench.sweep.category_search import PerCategorySearch
from raybench.sweep.storage import check_resumable, pickled_globals


def test_pickled_globals_reads_class_paths_without_unpickling():
    data = pickle.dumps({"searcher": PerCategorySearch}, protocol=4)
    assert ("raybench.sweep.category_search", "PerCategorySearch") in pickled_globals(data)
    old = b"craybench.category_search\nPerCategorySearch\n."  # protocol 0, as a 0.1 state could hold it
    assert pickled_globals(old) == {("raybench.category_search", "PerCategorySearch")}


def test_a_state_naming_0_1_modules_is_refused_with_the_reason(tmp_path):
    (tmp_path / "tuner.pkl").write_bytes(b"craybench.trial\nrun_trial\n.")
    with pytest.raises(ConfigError, match=r"earlier raybench.*raybench\.trial\.run_trial.*cannot be resumed"):
        check_resumable(str(tmp_path))


def test_a_state_of_this_layout_resumes(tmp_path):
    (tmp_path / "tuner.pkl").write_bytes(pickle.dumps(PerCategorySearch, protocol=4))
    (tmp_path / "searcher-state-2026.pkl").write_bytes(b"cbuiltins\nlen\n.")  # not raybench: ignored
    check_resumable(str(tmp_path))
