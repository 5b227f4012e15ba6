"""The command's process-wide set-up."""

import gc

from wsrelay.cli import tune_gc


def test_tune_gc_raises_the_young_threshold_and_freezes_what_is_loaded():
    before = gc.get_threshold()
    try:
        tune_gc(12_345)
        assert gc.get_threshold() == (12_345, before[1], before[2])
        assert gc.get_freeze_count() > 0
        gc.unfreeze()
        tune_gc(0)  # 0 leaves the collector as it is
        assert gc.get_threshold()[0] == 12_345
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
