import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import linalg
from torch_fidelity.metric_kid import kid_features_to_metric

from codecx.metrics.fid import FIDKID, InceptionFeatures, extract_patches, to_uint8
from codecx.metrics.weights import MissingWeightsError, hub_cache_path, resolve_weights

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


class StandIn:
    """Fixed random conv net + global pooling, features scaled like Inception's (~0.2); records input dtypes."""

    def __init__(self, dim=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.w1, self.w2 = torch.randn(16, 3, 3, 3, generator=g), torch.randn(dim, 16, 3, 3, generator=g) / 40
        self.dtypes = set()

    def __call__(self, x):
        self.dtypes.add(x.dtype)
        h = F.conv2d(x.float() / 255 - 0.5, self.w1, stride=2).relu()
        return F.conv2d(h, self.w2).relu().mean((2, 3))


def images(n=4, seed=0, h=48, w=64):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_extract_patches_counts_and_content():
    img = torch.arange(3 * 10 * 12, dtype=torch.float32).reshape(3, 10, 12)
    p = extract_patches(img, patch=4)
    # grid: rows {0,4} x cols {0,4,8}; shifted by 2: rows {2,6} x cols {2,6} (8x10 remainder -> 2x2 full tiles)
    corners = [(0, 0), (0, 4), (0, 8), (4, 0), (4, 4), (4, 8), (2, 2), (2, 6), (6, 2), (6, 6)]
    assert p.shape == (10, 3, 4, 4)
    for tile, (r, c) in zip(p, corners):
        assert torch.equal(tile, img[:, r:r + 4, c:c + 4])
    assert extract_patches(torch.zeros(3, 4, 4), 4).shape == (1, 3, 4, 4)  # shifted grid has no full tile
    assert extract_patches(torch.zeros(3, 3, 9), 4).shape == (0, 3, 4, 4)
    with pytest.raises(ValueError):
        extract_patches(torch.zeros(1, 3, 8, 8), 4)


def test_to_uint8_rounds_and_clamps():
    x = torch.tensor([-0.1, 0.0, 0.0019, 0.002, 0.2, 0.5, 1.0, 1.2])
    assert to_uint8(x).dtype == torch.uint8
    assert to_uint8(x).tolist() == [0, 0, 0, 1, 51, 128, 255, 255]
    u = torch.tensor([3, 200], dtype=torch.uint8)
    assert to_uint8(u) is u


def test_identical_sets_give_zero():
    ext = StandIn()
    m = FIDKID(feature_extractor=ext, patch=16)
    x = images()
    m.update(x, x)
    out = m.compute()
    assert ext.dtypes == {torch.uint8}  # extractor sees Inception-style uint8 input
    assert abs(out["fid"]) < 1e-3 and abs(out["kid"]) < 1e-3
    assert set(out) == {"fid", "kid", "kid_std"}
    m.reset()
    m.update(x, (x * 0.7).clamp(0, 1))
    assert m.compute()["kid"] > 100 * abs(out["kid"])  # unbiased KID of identical sets is only ~0 (O(1/m))


def test_fid_matches_direct_frechet_and_kid_clamps():
    ext = StandIn()
    real, fake = images(seed=1), (images(seed=1) * 0.7 + 0.1 * images(seed=2)).clamp(0, 1)
    m = FIDKID(feature_extractor=ext, patch=16)
    m.update(real[:2], fake[:2])  # accumulation over several updates
    m.update(real[2:], fake[2:])
    out = m.compute()

    def feats(x):
        return torch.cat([ext(to_uint8(extract_patches(im, 16))) for im in x]).double().numpy()

    f1, f2 = feats(real), feats(fake)
    assert len(f1) == 4 * (3 * 4 + 2 * 3) < 1000  # fewer samples than the default KID subset size
    mu1, mu2, s1, s2 = f1.mean(0), f2.mean(0), np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    direct = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert out["fid"] > 1e-2
    assert out["fid"] == pytest.approx(direct, rel=1e-3)
    ref = kid_features_to_metric(torch.from_numpy(f1).float(), torch.from_numpy(f2).float(), kid_subset_size=len(f1),
                                 verbose=False)
    assert out["kid"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-4) and out["kid"] > 0


def test_too_few_patches_raises():
    m = FIDKID(feature_extractor=StandIn(), patch=64)
    m.update(images(n=1), images(n=1))  # smaller than the patch: one whole-image sample per set
    with pytest.raises(ValueError, match="patch"):
        m.compute()


def test_missing_weights_names_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(MissingWeightsError) as e:
        FIDKID()
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert INCEPTION_FILE in msg and str(tmp_path / "th" / "hub" / "checkpoints" / INCEPTION_FILE) in msg
    assert "metrics.fid.weights" in msg
    with pytest.raises(MissingWeightsError, match=str(tmp_path / "nope.pth")):
        FIDKID(weights=tmp_path / "nope.pth")


def test_resolve_weights_explicit_dir_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    cached = hub_cache_path("w.pth")
    assert cached == tmp_path / "th" / "hub" / "checkpoints" / "w.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert resolve_weights("w.pth") == cached
    (tmp_path / "w.pth").write_bytes(b"y")
    assert resolve_weights("w.pth", tmp_path) == tmp_path / "w.pth"
    assert resolve_weights("w.pth", tmp_path / "w.pth") == tmp_path / "w.pth"


def test_inception_loads_local_file_without_download(tmp_path, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with monkeypatch.context() as mp:  # build a random-weights file in torch-fidelity's format
        mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
        mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        torch.manual_seed(0)
        state = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    torch.save(state, tmp_path / INCEPTION_FILE)

    def no_download(*a, **k):
        raise AssertionError("download attempted")

    monkeypatch.setattr(fe, "load_state_dict_from_url", no_download)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    m = FIDKID(weights=tmp_path)  # a directory holding the expected file name
    assert isinstance(m.extractor, InceptionFeatures)
    assert torch.equal(m.extractor.net.fc.weight, state["fc.weight"])
    x = images(n=1, h=64, w=64)
    f = m.extractor(x)
    assert f.shape == (1, 2048)
    assert torch.equal(f, m.extractor.net(to_uint8(x))[0])  # float input is converted to uint8 first


def test_documented_weights_file_is_torch_fidelitys():
    """The docs (Evaluation, Generative compression) and conf/eval.yaml name the file the FID step looks for."""
    from pathlib import Path

    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert URL_INCEPTION_V3.rsplit("/", 1)[-1] == INCEPTION_FILE
    root = Path(__file__).resolve().parent.parent
    for doc in ("docs/manual/evaluation.md", "docs/methods/generative.md", "codecx/conf/eval.yaml"):
        assert INCEPTION_FILE in (root / doc).read_text(), doc
