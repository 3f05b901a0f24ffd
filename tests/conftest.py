"""Shared fixtures: tiny codecs, real images, paths."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
KODAK = SHARED / "kodak"

# two threads on 2 cores; one per worker under pytest-xdist (`make test-quick` runs 2 workers)
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


#: session fixtures that run a subprocess (train.py): a test using one is in the medium tier
SUBPROCESS_FIXTURES = {"tiny_ckpt"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
    """Slow tests (several real runs in subprocesses) get a 3600 s hang timeout instead of the
    900 s default of pyproject.toml, unless they set their own @pytest.mark.timeout. A test that
    uses a SUBPROCESS_FIXTURES fixture is `medium`: the fast tier runs no subprocess."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(3600))
        if SUBPROCESS_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.medium)


def gaussian_conditional(levels: int):
    """A CompressAI GaussianConditional whose CDF tables use CompressAI's `levels`-level scale table."""
    from compressai.entropy_models import GaussianConditional
    from compressai.models.google import get_scale_table

    gc = GaussianConditional(None)
    gc.update_scale_table(get_scale_table(levels=levels))
    gc.update()
    return gc


@pytest.fixture(scope="module")
def one_thread():
    """2 shared cores: intra-op threads contend (10x slower), so a module uses one
    (`pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def kodak_image():
    """kodim23 as a (1,3,H,W) tensor in [0,1] (skips when the shared data is absent)."""
    import numpy as np
    from PIL import Image

    path = KODAK / "kodim23.png"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    arr = np.asarray(Image.open(path).convert("RGB"), dtype="float32") / 255
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)


#: backbone options (beyond N, M) that keep a registered backbone tiny in tests; Hydra overrides:
#: `tiny_model_overrides(name)`. A backbone with width options of its own adds them here.
TINY_OPTIONS = {"hific": {"channels": [4, 4, 4, 4, 4], "num_residual_blocks": 1}}


def tiny_backbone(name: str = "mbt_mean", N: int = 8, M: int = 12, **options):
    """Backbone `model=NAME` of the registry (codecx/conf/model/NAME.yaml) at tiny widths (cheng2020: M = N)."""
    from codecx.models import build_backbone

    return build_backbone(name, N=N, M=None if name.startswith("cheng") else M,
                          **{**TINY_OPTIONS.get(name, {}), **options})


def tiny_model_overrides(name: str) -> list:
    """Hydra overrides of TINY_OPTIONS for `model=NAME` (e.g. model.channels=[4,4,4,4,4])."""
    return [f"model.{k}={list(v) if isinstance(v, (list, tuple)) else v}".replace(" ", "")
            for k, v in TINY_OPTIONS.get(name, {}).items()]


def tiny_codec(name: str = "mbt_mean", quantizer: str = "noise", N: int = 8, M: int = 12):
    """A small codec for fast tests (real CompressAI layers and entropy models)."""
    from codecx.models import Codec
    from codecx.quantizers import MixedQuantizer, NoiseQuantizer, STEQuantizer

    q = {"noise": NoiseQuantizer, "ste": STEQuantizer, "mixed": MixedQuantizer}[quantizer]()
    return Codec(tiny_backbone(name, N=N, M=M), q)


def run_train(args, cwd=ROOT, timeout=600, env=None):
    """Run the real `python train.py ARGS` in a subprocess; returns CompletedProcess."""
    import subprocess

    e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=e)


def logged(run_dir, key: str = "train/loss"):
    """(step, value) of `key` in every csv/version_*/metrics.csv of a run directory, in order."""
    import csv

    rows = []
    for f in sorted(Path(run_dir).glob("csv/version_*/metrics.csv")):
        rows += [r for r in csv.DictReader(open(f)) if r.get(key)]
    return [(int(r["step"]), float(r[key])) for r in rows]


TINY = ["model.N=8", "model.M=12", "data.crop_size=64", "data.batch_size=2", "data.repeat=1",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
        "data.max_val_images=1", "data.val_crop_size=64"]


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """last.ckpt of a 2-step tiny `python train.py` run, trained once per test session."""
    run_dir = tmp_path_factory.mktemp("tiny_run")
    r = run_train([*TINY, "trainer.max_steps=2", f"hydra.run.dir={run_dir}"])
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory) -> Path:
    """A folder with two small PNGs: 64x96 crops of Kodak images (synthetic if Kodak is absent)."""
    import numpy as np
    from PIL import Image

    d = tmp_path_factory.mktemp("images")
    for i, name in enumerate(["kodim23.png", "kodim05.png"]):
        if (KODAK / name).is_file():
            im = Image.open(KODAK / name).convert("RGB").crop((200, 100, 296, 164))
        else:
            rng = np.random.default_rng(i)
            im = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
        im.save(d / f"img{i}.png")
    return d


from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment  # noqa: E402


class MemoryLogger(Logger):
    """A Lightning logger that keeps what it is given (to read the logged values back)."""

    def __init__(self):
        super().__init__()
        self.rows = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    @property
    @rank_zero_experiment
    def experiment(self):
        return None

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def values(self, key):
        return [(s, m[key]) for s, m in self.rows if key in m]
