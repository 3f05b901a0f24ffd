"""The paired fine-tuning protocol (experiment=base_zoo / finetune): arms differ only in the method."""
from __future__ import annotations

import pytest
import torch

from conftest import TINY, logged, run_train


ARM = [*TINY, "experiment=finetune", "lmbda=0.01", "trainer.max_steps=3", "trainer.val_check_interval=null",
       "data.num_workers=0", "eval.final_max_images=1"]


@pytest.mark.slow
def test_arms_start_from_the_same_base_and_see_the_same_data(tmp_path):
    zoo = tmp_path / "zoo"
    base = run_train([*TINY, "experiment=base_zoo", "lmbda=0.01", "trainer.max_steps=2",
                      "trainer.val_check_interval=null", "data.num_workers=0", "eval.final_max_images=1",
                      f"hydra.run.dir='{zoo}/lmbda=0.01'"])
    assert base.returncode == 0, base.stderr[-3000:]
    arms = {}
    for name, extra in [("a", []), ("b", []), ("bias", ["transform=bias"]), ("seed2", ["seed=2"])]:
        r = run_train([*ARM, f"base_dir={zoo}", *extra, f"hydra.run.dir={tmp_path / name}"])
        assert r.returncode == 0, r.stderr[-3000:]
        arms[name] = [v for _, v in logged(tmp_path / name, "train/loss")]
    # the same arm twice: the same run, step by step (reproducible protocol)
    assert arms["a"] == arms["b"] and len(arms["a"]) == 3
    # a method whose transform starts as the identity: the same first step (same base, same batch)
    assert arms["bias"][0] == pytest.approx(arms["a"][0], rel=1e-6)
    # another seed: other data order / noise, the same base
    assert arms["seed2"][0] != arms["a"][0]
    # the arm started from the base's weights, not from a fresh initialisation
    b = torch.load(zoo / "lmbda=0.01" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    k = "codec.backbone.h_a.0.weight"
    fresh = (a["state_dict"][k] - b["state_dict"][k]).abs().max()
    assert fresh < 1e-2  # 3 steps at lr 5e-5 move a weight by far less than a re-initialisation


def test_report_groups_arms_not_lambdas_or_seeds(tmp_path):
    """Settings that follow lmbda or seed (a base checkpoint per lambda, data.seed) never split groups."""
    from codecx.eval.runs import Run, group_runs

    runs = []
    for reg in ("none", "cse"):
        for lmbda in (0.0018, 0.0067):
            for seed in (1, 2):
                runs.append(Run(dir=tmp_path / f"{reg}{lmbda}{seed}", overrides={"reg": reg},
                                choices={"reg": reg},
                                config={"lmbda": lmbda, "seed": seed, "reg._target_": reg, "data.seed": seed,
                                        "model.weights": f"zoo/lmbda={lmbda}/last.ckpt"},
                                raw={"data.seed": "${seed}", "model.weights": "${base_dir}/lmbda=${lmbda}/last.ckpt"}))
    groups = group_runs(runs)
    assert sorted(len(v) for v in groups.values()) == [4, 4] and len(groups) == 2


def test_report_names_groups_by_the_overrides_as_written(tmp_path):
    """Arms that differ inside a config group (transform=lpc with and without
    transform.lpc.params=predicted, against transform=[]) are named by what the user wrote, not
    by every transform.lpc.* value; the groups themselves still follow the used configuration."""
    from codecx.eval.runs import Run, group_runs

    arms = {"none": ({"transform": "[]"}, {}, {"transform": {}}),
            "lpc": ({"transform": "lpc"}, {"transform": "lpc"}, {"params": "learned"}),
            "pred": ({"transform": "lpc", "transform.lpc.params": "predicted"}, {"transform": "lpc"},
                     {"params": "predicted"})}
    runs = []
    for name, (overrides, choices, lpc) in arms.items():
        for seed in (1, 2):
            config = {"lmbda": 0.01, "seed": seed}
            if name == "none":
                config["transform"] = {}
            else:
                config.update({"transform.lpc._target_": "codecx.transforms.lpc.LPC", "transform.lpc.hidden": 128,
                               "transform.lpc.params": lpc["params"]})
            runs.append(Run(dir=tmp_path / f"{name}{seed}", overrides=dict(overrides, seed=str(seed)),
                            choices=choices, config=config))
    groups = group_runs(runs, exclude=["seed"])
    assert sorted(groups) == ["transform=[]", "transform=lpc", "transform=lpc,transform.lpc.params=predicted"]
    assert [r.dir.name for r in groups["transform=lpc"]] == ["lpc1", "lpc2"]
