"""The method matrix: every valid combination of backbone x quantizer x latent transform x encoder
refiner x regularizer x distortion, covered pairwise (every pair of values of two dimensions is in
some tested combination), composes through real Hydra, builds a tiny model, trains one step with
a real Lightning Trainer and round-trips a real codecx file bit-exactly (decode == the eval
forward's reconstruction). A combination that cannot work is refused by the pre-flight check in
one line that says why (`codecx.config.check.combination_problem`, the one place of the rule).

The dimensions' values are the option files of codecx/conf (plus "none" for the optional groups),
so a new backbone, quantizer, transform, refiner, regularizer or distortion joins the matrix by
its YAML file; `TINY` keeps a new option small when its defaults are not.
"""
from __future__ import annotations

import itertools
from typing import Dict, List, Sequence, Tuple

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch.utils.data import DataLoader

from codecx.conf import CONF_DIR
from codecx.config import ConfigError, precheck
from codecx.config.check import combination_problem, group_options, parts_of_options
from codecx.models import BACKBONES
from conftest import tiny_model_overrides

pytestmark = pytest.mark.usefixtures("one_thread")

#: the matrix's dimensions: config group -> its values ("none": the optional group left empty)
DIMENSIONS: Dict[str, List[str]] = {
    "model": list(BACKBONES),
    "quantizer": group_options("quantizer", CONF_DIR),
    # latent_mse trains only a learned compensation before it: tested after lpc (alone it is refused)
    "transform": ["none", *[("lpc," if t == "latent_mse" else "") + t for t in group_options("transform", CONF_DIR)]],
    "refine": ["none", *group_options("refine", CONF_DIR)],
    "reg": group_options("reg", CONF_DIR),
    "distortion": group_options("distortion", CONF_DIR),
}

#: overrides that keep an option tiny (and fast); files come from the session fixtures
TINY = {
    ("transform", "lrp"): ["transform.lrp.hidden=8", "transform.lrp.hidden2=8"],
    ("transform", "lpc"): ["transform.lpc.hidden=8"],
    ("refine", "sga"): ["refine.sga.steps=2"],
    ("refine", "sga_original"): ["refine.sga_original.steps=2"],
    ("reg", "cse"): ["reg.hidden=4", "reg.alpha=0.1"],
    ("reg", "illm"): ["reg.labeler={labeler}", "reg.channels=[8,8,8,8,8,8]", "reg.head_channels=8",
                      "reg.context_channels=4"],
    ("reg", "patchgan"): ["reg.channels=[8,8,8,8]", "reg.context_channels=4"],
    ("distortion", "mse_lpips"): ["distortion.lpips_weights={alexnet}"],
}
#: training crop of a combination (ms_ssim: >= 161 px for its 5 scales; 192 = 3 x 64 for the U-Net D)
CROP = {("distortion", "ms_ssim"): 192}


def pairwise(dimensions: Dict[str, Sequence[str]], valid) -> Tuple[List[Dict[str, str]], List[tuple]]:
    """A deterministic greedy covering set of the valid combinations (AETG-like): every pair of
    values of two dimensions that some valid combination holds is in at least one returned
    combination. Returns (combinations, the pairs no valid combination holds)."""
    names = list(dimensions)
    every = [dict(zip(names, c)) for c in itertools.product(*(dimensions[n] for n in names))]
    good = [(c, frozenset(((a, c[a]), (b, c[b])) for a, b in itertools.combinations(names, 2)))
            for c in every if valid(c)]
    coverable = frozenset().union(*(pairs for _, pairs in good))
    every_pair = {((a, u), (b, v)) for a, b in itertools.combinations(names, 2)
                  for u in dimensions[a] for v in dimensions[b]}
    uncovered, chosen = set(coverable), []
    while uncovered:
        best, pairs = max(good, key=lambda g: len(g[1] & uncovered))  # the first maximum: deterministic
        chosen.append(best)
        uncovered -= pairs
    return chosen, sorted(every_pair - coverable)


def _valid(parts_cache):
    def valid(c: Dict[str, str]) -> bool:
        return combination_problem(parts_of_options(c, parts_cache, crop_size=_crop(c))) is None
    return valid


def _crop(c: Dict[str, str]) -> int:
    return max([64] + [v for (g, o), v in CROP.items() if c.get(g) == o])


PARTS_CACHE: Dict = {}
COMBINATIONS, REFUSED_PAIRS = pairwise(DIMENSIONS, _valid(PARTS_CACHE))


def overrides_of(c: Dict[str, str], files: Dict[str, str]) -> List[str]:
    """The train.py command line of combination `c` at tiny size (model.N=8, 64-px crops)."""
    m = c["model"]
    out = ["~experiment", f"model={m}", "model.N=8", "model.M=null" if m.startswith("cheng") else "model.M=12",
           *tiny_model_overrides(m), f"quantizer={c['quantizer']}", f"reg={c['reg']}",
           f"distortion={c['distortion']}", f"data.crop_size={_crop(c)}"]
    for group in ("transform", "refine"):
        if c[group] != "none":
            out.append(f"{group}=[{c[group]}]")
    for (group, option), extra in TINY.items():
        if option in c.get(group, "").split(","):
            out += [e.format(**files) for e in extra]
    return out


def _compose(overrides: List[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.fixture(scope="session")
def matrix_files(tmp_path_factory) -> Dict[str, str]:
    """A tiny VQ labeler (reg=illm) and a random AlexNet `features` state dict (mse_lpips's LPIPS)."""
    from torchvision.models import alexnet

    from codecx.regularizers.labeler import VQLabeler

    d = tmp_path_factory.mktemp("matrix")
    torch.manual_seed(0)
    VQLabeler(ch=8, ch_mult=(1, 2, 2, 2), num_res_blocks=1, embed_dim=16, code_dim=4,
              codebook_size=32).save(d / "labeler.pt")
    features = {f"features.{k}": v for k, v in alexnet(weights=None).features.state_dict().items()}
    torch.save(features, d / "alexnet-owt-7be5be79.pth")
    return {"labeler": str(d / "labeler.pt"), "alexnet": str(d / "alexnet-owt-7be5be79.pth")}


def _batch(size: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    return torch.nn.functional.avg_pool2d(x, 5, 1, 2)  # some spatial correlation


def _label(c: Dict[str, str]) -> str:
    return "-".join(c[k] for k in DIMENSIONS)


def test_pairwise_covers_every_pair_of_a_small_example():
    dims = {"a": ["0", "1", "2"], "b": ["x", "y"], "c": ["p", "q"]}
    chosen, refused = pairwise(dims, lambda c: not (c["a"] == "2" and c["b"] == "y"))
    covered = {((a, c[a]), (b, c[b])) for c in chosen for a, b in itertools.combinations(dims, 2)}
    assert refused == [(("a", "2"), ("b", "y"))]
    assert len(covered) == 3 * 2 + 3 * 2 + 2 * 2 - 1 and len(chosen) <= 7
    assert all(not (c["a"] == "2" and c["b"] == "y") for c in chosen)
    assert pairwise(dims, lambda c: True)[0] == pairwise(dims, lambda c: True)[0]  # deterministic


@pytest.mark.medium  # ~1-3 s each, about a minute and a half for the whole matrix on one core
@pytest.mark.parametrize("combo", COMBINATIONS, ids=_label)
def test_matrix_combination_trains_one_step_and_round_trips_exactly(combo, matrix_files, tmp_path):
    from codecx.coding.container import decode_image, encode_image
    from codecx.eval.load import fingerprint_of, prepare
    from codecx.train import build_module

    cfg = _compose(overrides_of(combo, matrix_files))
    pl.seed_everything(0, verbose=False)
    module = build_module(cfg)
    before = [p.detach().clone() for p in module.codec.parameters()]
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    trainer.fit(module, DataLoader(list(_batch(_crop(combo))), batch_size=2))
    assert trainer.global_step == 1
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, module.codec.parameters()))
    codec = prepare(module.codec)
    # 48 x 64: padded to the backbone's stride; MS-SSIM (the refiners' and the shift's objective
    # under distortion=ms_ssim) needs more than 160 px a side: 176 x 192 then
    big = combo["distortion"] == "ms_ssim"
    x = _batch(192, n=1, seed=1)[..., :176, :] if big else _batch(64, n=1, seed=1)[..., :48, :]
    fp = fingerprint_of(codec, module.config)
    with torch.no_grad():
        x_hat = codec(x).x_hat.clamp(0, 1)
        decoded, _ = decode_image(codec, encode_image(codec, x, fp), fp)
    assert torch.equal(decoded, x_hat)


NEUTRAL = {"model": "mbt_mean", "quantizer": "noise", "transform": "none", "refine": "none", "reg": "none",
           "distortion": "mse"}
#: combinations that cannot work beyond the matrix's refused pairs: (options, crop, words of the refusal)
MORE_REFUSALS = [
    ({"transform": "latent_mse"}, 64, "trains nothing"),            # no learned compensation before it
    ({"distortion": "ms_ssim"}, 64, "needs training crops of at least 161 px"),
]


def _refusal_cases():
    cases = [({**NEUTRAL, **dict(pair)}, None, "") for pair in REFUSED_PAIRS]
    return cases + [({**NEUTRAL, **c}, crop, words) for c, crop, words in MORE_REFUSALS]


@pytest.mark.parametrize("combo, crop, words", _refusal_cases(), ids=lambda v: _label(v) if isinstance(v, dict) else "")
def test_a_combination_that_cannot_work_is_refused_in_one_line(combo, crop, words, matrix_files):
    """Every pair of values no valid combination holds (bmshj_factorized x a lattice, SGA x a
    lattice, ...) is refused by the pre-flight check, in the one line of its rule."""
    crop = crop or _crop(combo)
    why = combination_problem(parts_of_options(combo, PARTS_CACHE, crop_size=crop))
    assert why and words in why
    overrides = [o for o in overrides_of(combo, matrix_files) if not o.startswith("data.crop_size=")]
    with pytest.raises(ConfigError) as e:
        precheck([*overrides, f"data.crop_size={crop}"], CONF_DIR)
    assert str(e.value) == why and "\n" not in why


def test_the_rules_refuse_what_the_components_refuse():
    """The rules agree with the components' own guards: what a rule refuses fails when built or
    run by hand (so a rule is never stricter than the code), e.g. SGA on a lattice quantizer."""
    from codecx.inference.sga import SGA
    from codecx.models import Codec
    from codecx.quantizers import LatticeQuantizer, NoiseQuantizer
    from codecx.transforms.lpc import LPC
    from conftest import tiny_backbone

    codec = Codec(tiny_backbone("mbt_mean"), LatticeQuantizer("hex"), refiners=[SGA(steps=1)], lmbda=0.01).eval()
    codec.update(force=True)
    with pytest.raises(ValueError, match="SGA relaxes scalar rounding"):
        codec(torch.rand(1, 3, 64, 64))
    codec = Codec(tiny_backbone("bmshj_factorized"), LatticeQuantizer("hex"))
    with pytest.raises(ValueError, match="lattice quantizers need a Gaussian"):
        codec.train()(torch.rand(1, 3, 64, 64))
    lpc = {"_target_": "codecx.transforms.lpc.LPC", "params": "predicted"}
    factorized = parts_of_options({"model": "bmshj_factorized", "quantizer": "noise"})
    factorized.transform = [("lpc", lpc)]
    assert "transform.lpc.params=predicted reads the prior's scales" in combination_problem(factorized)
    with pytest.raises(ValueError, match="params=predicted reads the prior's scales"):
        Codec(tiny_backbone("bmshj_factorized"), NoiseQuantizer(), transforms=[LPC(params="predicted")])


EXPERIMENTS = group_options("experiment", CONF_DIR)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(name, matrix_files, tiny_images, tmp_path):
    """Each codecx/conf/experiment/NAME.yaml composes (with the files it asks for and tiny widths),
    passes the pre-flight check and builds its codec and LitModule as the recipe says."""
    from omegaconf import OmegaConf

    from codecx.models.build import instantiate_backbone
    from codecx.train import build_module

    base = [f"experiment={name}", f"data.train_dir={tiny_images}", f"data.val_dir={tiny_images}"]
    cfg = _compose(base)
    model = cfg.model.name
    tiny = ["model.N=8", "model.M=null" if model.startswith("cheng") else "model.M=12", *tiny_model_overrides(model),
            "data.crop_size=64"]
    missing = {f"{k}.{m}" for k in ("model", "reg", "data", "distortion") for m in OmegaConf.missing_keys(cfg[k])}
    if cfg.get("distortion", {}).get("_target_", "").endswith("MSELPIPS"):
        tiny.append(f"distortion.lpips_weights={matrix_files['alexnet']}")
    if cfg.get("reg", {}).get("_target_", "").endswith("ILLMRegularizer"):
        tiny += [o.format(**matrix_files) for o in TINY["reg", "illm"]]
    if "model.weights" in missing or OmegaConf.select(cfg, "model.weights", throw_on_missing=False) is not None:
        # the recipe starts from a checkpoint: the tiny model's own weights stand in for it
        node = OmegaConf.to_container(_compose([*base, *tiny]).model, resolve=True, throw_on_missing=False)
        weights = tmp_path / "weights.pth"
        torch.save(instantiate_backbone({**node, "weights": None}).state_dict(), weights)
        tiny.append(f"model.weights={weights}")
    overrides = [*base, *tiny]
    precheck(overrides, CONF_DIR)
    cfg = _compose(overrides)
    assert not [m for k in ("model", "reg", "data", "distortion") for m in OmegaConf.missing_keys(cfg[k])]
    module = build_module(cfg)
    assert type(module.codec.backbone).__name__ == cfg.model._target_.rsplit(".", 1)[-1]
    assert type(module.codec.quantizer).__name__ == cfg.quantizer._target_.rsplit(".", 1)[-1]
    assert module.lmbda == pytest.approx(cfg.lmbda)
    assert [type(r).__name__ for r in module.regularizers] == (
        [cfg.reg._target_.rsplit(".", 1)[-1]] if cfg.reg.get("_target_") else [])

