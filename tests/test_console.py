"""The console of `python train.py`: one step-counting progress bar, no library noise, the
classical codecs at the same bpp at the end (issue: a main job worth running)."""
from __future__ import annotations

import pytest

from conftest import TINY, run_train

pytestmark = pytest.mark.medium


def test_console_is_clean_and_compares_with_jpeg(tmp_path):
    r = run_train([*TINY, "trainer.enable_progress_bar=true", "trainer.max_steps=3",
                   "trainer.val_check_interval=3", "trainer.check_val_every_n_epoch=null",
                   f"hydra.run.dir={tmp_path}"])
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "train: 3/3 steps" in out and "s/it" in out and "bpp=" in out and "psnr=" in out
    for noise in ("💡", "litlogger", "LeafSpec", "def training_step", "v_num", "Epoch 0/",
                  "could not find the monitored key", "Total FLOPs"):
        assert noise not in out, noise
    assert "codecx: training mbt_mean (N=8, M=12" in out
    assert "JPEG at the same bpp:" in out and "WebP at the same bpp:" in out
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()  # validation ran at the last step
