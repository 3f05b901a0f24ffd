"""Hydra composition: every group option composes and instantiates; bad input fails early
with the valid choices."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from codecx.config import ConfigError, precheck
from codecx.train import CONF_DIR, build_module

GROUPS = ["model", "quantizer", "reg", "schedule", "data", "trainer", "logger"]


def options(group):
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def _compose(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def test_every_group_has_options():
    for g in GROUPS:
        assert options(g), g
    assert {"bmshj_factorized", "bmshj_hyperprior", "mbt_mean", "mbt", "cheng_anchor",
            "cheng_attn"} <= set(options("model"))
    assert {"noise", "ste", "mixed"} <= set(options("quantizer"))
    assert {"cpu", "gpu", "ddp"} <= set(options("trainer"))
    assert {"csv", "wandb", "tensorboard"} <= set(options("logger"))


@pytest.mark.parametrize("model", options("model"))
def test_every_model_builds(model):
    cfg = _compose([f"model={model}", "model.N=8", "model.M=8" if not model.startswith("cheng") else "model.M=null"])
    mod = build_module(cfg)
    assert mod.codec.backbone.N == 8


@pytest.mark.parametrize("group", ["quantizer", "reg", "schedule", "data"])
def test_every_option_instantiates(group, tmp_path):
    for opt in options(group):
        extra = [f"data.train_dir={tmp_path}"] if (group, opt) == ("data", "folder") else []
        if (group, opt) == ("reg", "illm"):  # its VQ-VAE labeler comes from a file (codecx train-labeler)
            from codecx.regularizers.labeler import VQLabeler

            VQLabeler(ch=8, ch_mult=(1, 2, 2, 2), num_res_blocks=1, embed_dim=16, code_dim=4,
                      codebook_size=32).save(tmp_path / "labeler.pt")
            extra = [f"reg.labeler={tmp_path / 'labeler.pt'}", "reg.channels=[8,8,8,8,8,8]", "reg.head_channels=8"]
        cfg = _compose([f"{group}={opt}", "model.N=8", "model.M=8", *extra])
        node = OmegaConf.to_container(cfg[group], resolve=True)
        if group == "data":
            built = instantiate(cfg.data)
        else:
            module = build_module(cfg)
            built = {"quantizer": module.codec.quantizer, "schedule": module.schedule,
                     "reg": module.regularizers[0] if len(module.regularizers) else None}[group]
        if not node.get("_target_"):  # reg=none: nothing is built
            assert built is None, (group, opt)
            continue
        assert type(built).__name__ == node["_target_"].rsplit(".", 1)[-1], (group, opt)
        # the option's settings reach the object (where it keeps them under their own name)
        kept = {k: v for k, v in node.items() if isinstance(v, (bool, int, float, str)) and not k.startswith("_")
                and isinstance(getattr(built, k, None), (bool, int, float, str))}
        assert kept and all(getattr(built, k) == v for k, v in kept.items()), (group, opt, kept)


def test_top_level_knobs_interpolate():
    cfg = _compose(["lmbda=0.013", "seed=3"])
    assert cfg.lmbda == 0.013
    assert build_module(_compose(["lmbda=0.013", "model.N=8", "model.M=8"])).lmbda == 0.013


@pytest.mark.parametrize("overrides, expected", [
    (["model=foo"], r"Available options in 'model'(.|\n)*mbt_mean"),
    (["quantizer=nope"], r"Available options in 'quantizer'(.|\n)*noise"),
    (["model.foo=1"], r"unknown key 'model.foo'; valid keys of model: _target_, name, N, M"),
    (["lmbda=abc"], r"wrong type for lmbda"),
    (["model.N=abc"], r"wrong type for model.N"),
    (["+reg.foo=1"], r"unknown key\(s\) reg.foo"),
    (["+schedule.lrr=1"], r"unknown key\(s\) schedule.lrr(.|\n)*valid keys: .*aux_lr"),
    (["lmbda=0.1,abc"], r"wrong type for lmbda"),  # a bad sweep value is caught too
    # the keys of the chosen option, not of the default one
    (["reg=cse", "reg.alph=1"], r"unknown key 'reg.alph'; valid keys of reg: _target_, alpha, source_model"),
    (["quantizer=hex", "quantizer.foo=1"], r"valid keys of quantizer: .*lattice, grouping"),
    # untyped groups: the callable's annotations and defaults give the type
    (["schedule.lr=abc"], r"wrong type for schedule.lr: 'abc' is not a number"),
    (["reg=cse", "reg.alpha=abc"], r"wrong type for reg.alpha: 'abc' is not a number"),
    (["quantizer=hex", "quantizer.max_joint=1.5"], r"quantizer.max_joint: 1.5 is not an integer"),
    (["reg=cse", "alpha=1,x"], r"wrong type for alpha"),
    # an unquoted path with '=' (run dirs are named lmbda=L): the parse error says to quote it
    (["model.weights=runs/zoo/lmbda=0.0067/last.ckpt"],
     r"cannot parse the overrides: .*The value of model.weights contains '=': quote it"),
])
def test_bad_config_fails_before_training(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        precheck(overrides, CONF_DIR)


def test_good_overrides_pass_precheck():
    precheck(["model=mbt_mean", "reg=none", "lmbda=0.0067", "trainer.max_steps=20"], CONF_DIR)
    precheck(["model=mbt_mean", "lmbda=0.0018,0.0067", "trainer.max_steps=5"], CONF_DIR)
    precheck(["reg=cse", "reg.alpha=2", "schedule.lr=1e-3", "schedule.clip_max_norm=null",
              "quantizer=hex", "quantizer.order=3"], CONF_DIR)


def test_wrong_values_are_rejected(tmp_path):
    from codecx.lit import Schedule

    with pytest.raises(ValueError, match="schedule.scheduler='nope'"):
        Schedule(scheduler="nope")
    with pytest.raises(ValueError, match="lmbda=-1"):
        build_module(_compose(["lmbda=-1", "model.N=8", "model.M=8"]))


def test_slurm_launcher_config_composes():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4",
                                          "trainer.num_nodes=2"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.nodes == 2 and launcher.tasks_per_node == 4


@pytest.mark.parametrize("name, model, alpha", [("cse_hyperprior", "mbt_mean", 0.1),
                                                ("cse_mbt", "mbt", 1.0), ("cse_cheng", "cheng_attn", 1.0)])
def test_cse_recipes_pin_the_paper_settings(name, model, alpha, tmp_path):
    cfg = _compose([f"experiment={name}", f"data.train_dir={tmp_path}"])
    assert cfg.model.name == model and cfg.alpha == alpha and cfg.reg.alpha == alpha
    assert cfg.data.batch_size == 16 and cfg.data.crop_size == 256 and cfg.seed == 1
    assert cfg.schedule.lr == 1e-4 and cfg.reg.lr == 1e-3
    assert cfg.reg._target_.endswith("CSERegularizer")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        hcfg = compose("train", overrides=[f"experiment={name}", f"data.train_dir={tmp_path}"],
                       return_hydra_config=True)
    assert hcfg.hydra.sweeper.params.lmbda == "0.0018,0.0035,0.0067,0.0130"  # -m sweeps the 4


@pytest.mark.parametrize("overrides, alpha", [
    (["reg=cse"], 0.0),                                  # reg=cse's own default
    (["reg=cse", "alpha=1"], 1.0),                       # the project's command: the shorthand
    (["reg=cse", "reg.alpha=2"], 2.0),                   # its own key
    (["experiment=cse_mbt", "alpha=0.5"], 0.5),          # the command line overrides a recipe
    (["experiment=cse_hyperprior", "reg.alpha=0.3"], 0.3),
])
def test_alpha_is_the_cse_key_with_a_command_line_shorthand(overrides, alpha, tmp_path):
    """reg.alpha is CSE's own key (default 0 in conf/reg/cse.yaml); `alpha=V` on the command line
    (`python train.py model=mbt_mean reg=cse alpha=1`) sets it; the stored config has no root alpha."""
    from codecx.config import to_container

    cfg = _compose([*overrides, "model.N=8", "model.M=8", f"data.train_dir={tmp_path}"])
    assert cfg.reg.alpha == alpha
    (reg,) = build_module(cfg).regularizers
    assert reg.alpha == alpha
    stored = to_container(cfg)
    assert "alpha" not in stored and stored["reg"]["alpha"] == alpha


def test_alpha_without_cse_changes_nothing_and_recipe_baselines_compose(tmp_path):
    """`reg=none,cse alpha=0.1` sweeps: alpha is ignored by reg=none; a CSE recipe's baseline
    (`experiment=cse_mbt reg=none`, as its header says) passes the pre-flight check."""
    assert len(build_module(_compose(["reg=none", "alpha=0.1", "model.N=8", "model.M=8"])).regularizers) == 0
    for name in ("cse_hyperprior", "cse_mbt", "cse_cheng"):
        precheck([f"experiment={name}", "reg=none", f"data.train_dir={tmp_path}"], CONF_DIR)
    with pytest.raises(ConfigError, match="alpha=-1.0: must be >= 0"):
        from codecx.train import validate_config

        precheck(["alpha=-1"], CONF_DIR, validate=lambda c: validate_config(c, build=False))


def test_cpu_study_recipe_validates_by_steps(tmp_path):
    """experiment=cpu_study: validation every 200 steps across epochs (check_val_every_n_epoch=null
    reaches the Trainer as None, not Lightning's default 1), multistep decay at step 1000."""
    from omegaconf import open_dict

    from codecx.train import build_trainer

    cfg = _compose(["experiment=cpu_study"])
    with open_dict(cfg):
        cfg.logger = {}  # no logger: the CSV logger needs Hydra's run dir
    assert cfg.model.name == "mbt_mean" and (cfg.model.N, cfg.model.M) == (64, 96)
    assert cfg.trainer.max_steps == 1200 and cfg.schedule.milestones == [1000]
    trainer = build_trainer(cfg, tmp_path)
    assert trainer.check_val_every_n_epoch is None and trainer.val_check_interval == 200


def test_long_zoo_continues_the_base_zoo():
    """experiment=base_zoo_long is base_zoo with a later T: the same recipe and learning-rate
    schedule through base_zoo's T (so build.sh may start it from base_zoo's last.ckpt), no drop
    after it, and step 0.8T kept for the convergence check."""
    base, long = _compose(["experiment=base_zoo"]), _compose(["experiment=base_zoo_long"])
    T = long.trainer.max_steps
    assert T > base.trainer.max_steps and 0.8 * T in long.checkpoint.keep_steps
    assert long.schedule == base.schedule and max(long.schedule.milestones) < base.trainer.max_steps
    assert (long.model, long.data, long.seed) == (base.model, base.data, base.seed)


def test_model_defaults_are_the_zoo_sizes():
    """Each model's default N, M are CompressAI's zoo architecture at quality 1, so a zoo state
    dict loads with `model.weights=PATH` and no size overrides."""
    from compressai.zoo.image import cfgs

    from codecx.models import ZOO_NAMES

    zoo = dict(ZOO_NAMES)
    assert set(zoo) <= set(options("model"))  # backbones without a CompressAI twin are welcome
    for name, zoo_name in zoo.items():
        m = _compose([f"model={name}"]).model
        assert (m.N, m.M)[: len(cfgs[zoo_name][1])] == cfgs[zoo_name][1], name


def test_group_null_becomes_hydra_delete_only_for_groups():
    """GROUP=null drops a config group's default (Hydra's ~GROUP); a plain key set to null, an
    already-prefixed override and a value merely containing 'null' stay as written."""
    from codecx.config.check import drop_null_groups

    args = ["experiment=null", "model.weights=null", "+foo=null", "reg=cse", "name=nullish", "--multirun"]
    assert drop_null_groups(args, CONF_DIR) == [
        "~experiment", "model.weights=null", "+foo=null", "reg=cse", "name=nullish", "--multirun"]
