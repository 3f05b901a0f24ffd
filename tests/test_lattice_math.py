"""Lattice VQ math: Conway & Sloane 1982 nearest points, NSM constants, Gaussian cell masses."""
import math

import pytest
import torch

from codecx.lattice_math import (
    LATTICES, IntegerLattice, cell_log_prob, cell_prob, get_lattice, normalized_second_moment, sample_voronoi,
    support,
)

NAMES = ["hex", "oct", "d4"]
F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def near_points(lat, mu, sigma, z=6.5):
    """Lattice points whose cells can carry mass of N(mu, sigma) (mu, sigma: (v,) float64)."""
    half = z * sigma + lat.covering_radius
    ginv = torch.linalg.inv(lat.generator)
    k0, r = mu @ ginv, half @ ginv.abs()
    grid = torch.cartesian_prod(*[torch.arange(math.floor(a - b), math.ceil(a + b) + 1) for a, b in zip(k0, r)])
    pts = lat.from_index(grid.reshape(-1, lat.dim), F64)
    # a cell lies beyond |p - mu| - rho in every coordinate: the dropped cells carry < P(chi2_v > z^2)
    maha = ((pts - mu).abs() - lat.covering_radius).clamp(min=0).div(sigma).square().sum(-1)
    return pts[maha <= z * z]


def test_registry_and_unit_volume():
    assert sorted(LATTICES) == ["d4", "hex", "oct"]
    for name in NAMES + ["z2"]:
        lat = get_lattice(name)
        assert lat.generator.shape == (lat.dim, lat.dim)
        assert torch.linalg.det(lat.generator).abs().item() == pytest.approx(1.0, abs=1e-12)
    assert get_lattice("hex") is LATTICES["hex"] and get_lattice("oct").dim == 3 and get_lattice("d4").dim == 4
    with pytest.raises(KeyError, match="hex.*oct|d4"):
        get_lattice("e8")


@pytest.mark.parametrize("name", NAMES + ["z3"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_nearest_is_closest_point_and_indices_are_exact(name, dtype):
    lat = get_lattice(name)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4000, lat.dim, generator=g, dtype=F64) * 5).to(dtype)
    p = lat.nearest(x)
    idx = lat.to_index(p)
    assert p.dtype == dtype and idx.dtype == torch.int64
    assert torch.equal(lat.from_index(idx, dtype), p) and torch.equal(lat.nearest_index(x), idx)
    # brute force over the neighbours of the returned point (closed form, no codebook search)
    offs = torch.cartesian_prod(*[torch.arange(-2, 3)] * lat.dim)
    cand = lat.from_index(idx.unsqueeze(1) + offs, F64)
    best = (cand - x.double().unsqueeze(1)).square().sum(-1).min(1).values
    err = (p.double() - x.double()).square().sum(-1)
    assert (err <= best + (1e-10 if dtype == F64 else 1e-4)).all()
    assert err.sqrt().max() <= lat.covering_radius + 1e-4


@pytest.mark.parametrize("name", NAMES + ["z1", "z2"])
def test_normalized_second_moment(name):
    lat = get_lattice(name)
    known = {"z1": 1 / 12, "z2": 1 / 12, "hex": 0.080188, "oct": 0.078543, "d4": 0.076603}[name]
    assert normalized_second_moment(lat, 1 << 15) == pytest.approx(known, rel=5e-3)


@pytest.mark.parametrize("name", NAMES)
def test_sample_voronoi_is_uniform_on_the_cell(name):
    lat = get_lattice(name)
    e = sample_voronoi(lat, (200, 100), dtype=F64, generator=torch.Generator().manual_seed(1))
    assert e.shape == (200, 100, lat.dim)
    assert (lat.nearest_index(e) == 0).all()  # inside the cell of the origin
    assert e.mean((0, 1)).abs().max() < 0.01
    assert e.square().sum(-1).mean().item() / lat.dim == pytest.approx(lat.nsm, rel=0.02)
    assert sample_voronoi(lat, (3,)).dtype == torch.float32


CASES = {  # (sigma, mean) pairs: small, large and anisotropic scales
    "hex": [((0.1, 0.1), (0.31, -0.2)), ((10.0, 10.0), (1.3, 0.4)), ((1.0, 0.05), (0.2, 0.45))],
    "oct": [((0.1, 0.1, 0.1), (0.4, -0.33, 0.1)), ((10.0, 2.0, 0.1), (0.3, 0.2, -0.45)),
            ((1.0, 1.0, 1.0), (0.2, 0.1, 0.0))],
    "d4": [((0.1,) * 4, (0.4, 0.4, -0.1, 0.3)), ((10.0, 0.5, 0.1, 0.1), (0.2, 0.1, 0.3, 0.45)),
           ((1.0,) * 4, (0.3, 0.0, 0.2, 0.1))],
}


@pytest.mark.parametrize("name", NAMES)
def test_cell_probabilities_sum_to_one(name):
    lat = get_lattice(name)
    for sigma, mu in CASES[name]:
        sigma, mu = torch.tensor(sigma, dtype=F64), torch.tensor(mu, dtype=F64)
        pts = near_points(lat, mu, sigma)
        p = cell_prob(lat, pts, mu, sigma, bound=None)
        assert (p >= 0).all()
        assert p.sum().item() == pytest.approx(1.0, abs=1e-6), (sigma, len(pts))
        if max(sigma) <= 1:  # float32 as well
            p32 = cell_prob(lat, pts.float(), mu.float(), sigma.float(), bound=None)
            assert p32.dtype == torch.float32 and p32.double().sum().item() == pytest.approx(1.0, abs=1e-4)
            assert torch.allclose(p32.double(), p, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_cell_probabilities_match_monte_carlo(name):
    lat = get_lattice(name)
    g = torch.Generator().manual_seed(2)
    sigma = torch.linspace(0.25, 0.9, lat.dim, dtype=F64)
    mu = torch.rand(lat.dim, generator=g, dtype=F64)
    n = 300_000
    x = mu + sigma * torch.randn(n, lat.dim, generator=g, dtype=F64)
    idx, counts = lat.nearest_index(x).unique(dim=0, return_counts=True)
    p = cell_prob(lat, lat.from_index(idx, F64), mu, sigma, bound=None)
    big = counts >= 30
    assert big.sum() >= 5
    z = (counts - n * p) / (n * p * (1 - p)).sqrt()
    assert z[big].abs().max() < 5, z[big]


@pytest.mark.parametrize("name", NAMES)
def test_cell_prob_gradients(name):
    lat = get_lattice(name)
    g = torch.Generator().manual_seed(3)
    mu = (torch.rand(3, lat.dim, generator=g, dtype=F64) - 0.5).requires_grad_()
    sigma = torch.tensor([0.15, 0.6, 2.0], dtype=F64)[:, None].expand(3, lat.dim).clone()
    sigma = (sigma * (1 + 0.3 * torch.rand(3, lat.dim, generator=g, dtype=F64))).requires_grad_()
    pts = lat.from_index(torch.tensor([0, 1] + [0] * (lat.dim - 2)).expand(3, lat.dim), F64)
    assert torch.autograd.gradcheck(lambda m, s: cell_log_prob(lat, pts, m, s, bound=None), (mu, sigma))
    # float32 with extreme scales and far cells: finite values, finite gradients, the 1e-9 floor
    m32 = torch.zeros(4, lat.dim, requires_grad=True)
    s32 = torch.tensor([0.05, 0.05, 50.0, 50.0])[:, None].expand(4, lat.dim).clone().requires_grad_()
    far = lat.from_index(torch.tensor([[0] * lat.dim, [40] * lat.dim, [0] * lat.dim, [40] * lat.dim]))
    lp = cell_log_prob(lat, far, m32, s32)
    lp.sum().backward()
    assert torch.isfinite(lp).all() and lp[1].item() == pytest.approx(math.log(1e-9), rel=1e-5)
    assert torch.isfinite(m32.grad).all() and torch.isfinite(s32.grad).all()
    assert s32.grad[2].sum() < 0  # a wider Gaussian puts less mass on the central cell


def test_integer_lattice_is_scalar_quantization():
    lat = IntegerLattice(2)
    mu, sigma = torch.tensor([0.3, -1.2], dtype=F64), torch.tensor([0.7, 2.0], dtype=F64)
    pts = torch.tensor([[0.0, -1.0], [1.0, 2.0]], dtype=F64)
    phi = lambda t: 0.5 * torch.erfc(-t / math.sqrt(2))  # noqa: E731
    ref = (phi((pts + 0.5 - mu) / sigma) - phi((pts - 0.5 - mu) / sigma)).prod(-1)
    assert torch.allclose(cell_prob(lat, pts, mu, sigma), ref, rtol=1e-12)


@pytest.mark.parametrize("name", ["hex", "oct"])
def test_support_covers_the_mass_and_locates_symbols(name):
    lat = get_lattice(name)
    g = torch.Generator().manual_seed(4)
    scales = 0.1 + torch.rand(8, lat.dim, generator=g, dtype=F64)
    means = torch.randn(8, lat.dim, generator=g, dtype=F64)
    sup = support(lat, scales, means)
    k_total = sup.offsets.shape[0]
    assert sup.index.shape == (8, k_total, lat.dim) and sup.prob.shape == sup.valid.shape == (8, k_total)
    assert torch.equal(sup.center, lat.nearest_index(means))
    assert (sup.prob[sup.valid] >= 1e-7).all() and (sup.prob[~sup.valid] == 0).all()
    assert sup.prob.sum(1).sub(1).abs().max() < 1e-4  # dropped symbols carry < 1e-4 in all
    ref = cell_prob(lat, lat.from_index(sup.index, F64), means.unsqueeze(1), scales.unsqueeze(1), bound=None)
    assert torch.allclose(sup.prob, torch.where(sup.valid, ref, 0))
    # every quantized sample maps to its own candidate
    y = means + scales * torch.randn(8, lat.dim, generator=g, dtype=F64)
    idx = lat.nearest_index(y)
    k, escaped = sup.locate(idx)
    assert not escaped.any() and torch.equal(sup.index[torch.arange(8), k], idx)
    # far points escape; with clip they map to the nearest valid candidate
    k, escaped = sup.locate(idx + 30)
    assert escaped.all() and (k == 0).all()
    k, escaped = sup.locate(idx + 30, clip=True)
    assert escaped.all() and sup.valid[torch.arange(8), k].all()
    far = lat.from_index(idx + 30, F64).unsqueeze(1)
    dist = (lat.from_index(sup.index, F64) - far).square().sum(-1).masked_fill(~sup.valid, math.inf)
    assert torch.equal(k, dist.argmin(1))


def test_support_is_bounded():
    lat = get_lattice("d4")
    sup = support(lat, torch.full((3, 4), 0.3))  # zero means: the coder quantizes y - means
    assert (sup.center == 0).all() and sup.offsets.shape[0] < 2000
    assert torch.equal(sup.offsets[0], torch.zeros(4).long())
    with pytest.raises(ValueError, match="max_points"):
        support(lat, torch.full((3, 4), 20.0))
    small = support(lat, torch.full((3, 4), 0.3), radius=1.5)  # caller-chosen radius: escapes beyond
    assert small.offsets.shape[0] < sup.offsets.shape[0]


@pytest.mark.parametrize("name", NAMES)
def test_support_prefilter_drops_no_symbol_and_the_coder_tables_are_support(name):
    """The box pre-filter of `support` keeps every point of mass >= tail (checked against
    quadrature on the whole ball), and the coder's joint table of a key is `support` of that
    zero-mean group: the same alphabet, each point's symbol its position in it."""
    from codecx.coding.lattice_coder import _TABLE_ORDER, KEY_SCALES, LatticeTables
    from codecx.lattice_math import _ball, support_radius

    lat = get_lattice(name)
    g = torch.Generator().manual_seed(7)
    scales = KEY_SCALES.double()[torch.randint(0, 12, (3, lat.dim), generator=g)]  # 0.11 .. ~0.6
    means = torch.randn(3, lat.dim, generator=g, dtype=F64)
    sup = support(lat, scales, means)
    ball = _ball(lat, round(support_radius(lat, scales.max().item()), 6))
    center = lat.nearest_index(means)
    for i in range(3):
        p = cell_prob(lat, lat.from_index(center[i] + ball, F64), means[i], scales[i], bound=None)
        want = {tuple(o) for o in ball[p >= 1e-7].tolist()}
        assert {tuple(o) for o in sup.offsets[sup.valid[i]].tolist()} == want
    table = LatticeTables(lat)._build(scales[0])
    zero = support(lat, scales[:1], order=_TABLE_ORDER)
    assert torch.equal(table.offsets, zero.offsets) and zero.valid.all()
    sym, esc = table.symbols(torch.cat([zero.offsets, zero.offsets[-1:] + 50]))
    assert torch.equal(sym, torch.arange(table.size + 1)) and esc.tolist() == [False] * table.size + [True]
