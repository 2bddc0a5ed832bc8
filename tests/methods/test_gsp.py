"""Tests for labkit.methods.gsp: the transport solver, its backward pass, the layer and ZSR."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit.methods import gsp
from labkit.methods.gsp import (
    GSP,
    GSPMetricLoss,
    ZeroShotPredictionLoss,
    gsp_transport,
    k_center,
    prototype_costs,
    transport_iterations,
    transport_weights,
    unit_ball,
    zero_shot_prediction_loss,
)


def _costs(b=3, k=4, n=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return 2.0 * torch.rand(b, k, n, generator=g, dtype=dtype)


def _authors_solver(costs, mu, gamma, iters=2000):
    """The authors' plain-domain iteration (spec §2), float64, as an independent reference."""
    n = costs.shape[-1]
    e = torch.exp(-gamma * costs)
    s = e.sum(1)
    beta = torch.full((costs.shape[0], 1), mu, dtype=costs.dtype)
    for _ in range(iters):
        rho = (1.0 / n) / (1.0 + beta * s)
        beta = mu / (rho * s).sum(-1, keepdim=True)
    rho = (1.0 / n) / (1.0 + beta * s)
    return rho, beta.unsqueeze(-1) * e * rho.unsqueeze(1)


# ----------------------------------------------------------------------------- the solution
@pytest.mark.parametrize("mu", [0.1, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("gamma", [0.5, 5.0, 20.0])
def test_marginals_and_kkt(mu, gamma):
    c = _costs()
    n = c.shape[-1]
    # The fixed point contracts at a rate of about μ (slower for sharp selections), so allow
    # enough steps for float64 convergence.
    rho, pi = gsp_transport(c, mu, gamma, iters=5000)
    assert (rho >= 0).all() and (pi >= 0).all()
    torch.testing.assert_close(rho + pi.sum(1), torch.full_like(rho, 1 / n), rtol=0, atol=1e-15)
    torch.testing.assert_close(pi.sum((1, 2)), torch.full((3,), mu, dtype=c.dtype),
                               rtol=0, atol=1e-12)
    # Stationarity of the entropic Lagrangian: log π_ki - log ρ_i + γ c_ki = log β, the same
    # for every (k, i) of an image. With the marginals this certifies the unique optimum.
    log_beta = pi.log() - rho.log().unsqueeze(1) + gamma * c
    spread = log_beta.amax((1, 2)) - log_beta.amin((1, 2))
    assert spread.max() < 1e-9


def test_matches_authors_plain_iteration():
    c = _costs(b=5, k=7, n=9, seed=3)
    rho, pi = gsp_transport(c, 0.3, 5.0)
    rho_ref, pi_ref = _authors_solver(c, 0.3, 5.0)
    torch.testing.assert_close(rho, rho_ref, rtol=0, atol=1e-14)
    torch.testing.assert_close(pi, pi_ref, rtol=0, atol=1e-14)


def test_early_stop_matches_full_iterations_float32():
    c = 2.0 * torch.rand(64, 64, 49, generator=torch.Generator().manual_seed(1))
    steps = transport_iterations(c, 0.3, 5.0)
    assert steps < 40  # the point of stopping at convergence
    rho, pi = gsp_transport(c, 0.3, 5.0)
    rho_full, pi_full = gsp_transport(c, 0.3, 5.0, iters=100, tol=0.0)
    assert (pi - pi_full).abs().max() < 1e-6
    assert (rho - rho_full).abs().max() < 1e-6


def _two_group_costs(dtype: torch.dtype) -> torch.Tensor:
    """(8, 64, 49) costs: 24 features near every prototype (< 0.1), the rest far from all."""
    g = torch.Generator().manual_seed(2)
    c = 2.0 - 0.1 * torch.rand(8, 64, 49, generator=g, dtype=dtype)
    c[:, :, :24] = 0.1 * torch.rand(8, 64, 24, generator=g, dtype=dtype)
    return c


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mu", [0.01, 0.3, 0.9, 0.999])
def test_converges_fast_when_features_form_two_far_groups(dtype, mu):
    # at γ = 50 the two groups' ℓ differ by ~95, so kept features saturate (σ ≈ 1) and
    # M - Σ σ² would cancel to rounding noise
    c = _two_group_costs(dtype)
    steps = transport_iterations(c, mu, 50.0)
    assert steps <= 20
    rho, pi = gsp_transport(c, mu, 50.0)
    mass = pi.sum(dim=(1, 2))
    assert torch.allclose(mass, torch.full_like(mass, mu), rtol=1e-5, atol=0)
    # the first steps hit the step floor (the start lies far right of the root); autograd
    # through them must stay finite and, in float64 (float32 rounding dominates the tiny
    # gradients at μ = 0.01), agree with the closed form
    grads = {}
    for mode in ("implicit", "unrolled"):
        x = c.detach().requires_grad_(True)
        rho, pi = gsp_transport(x, mu, 50.0, backward=mode)
        (pi.square().sum() + rho.sum()).backward()
        grads[mode] = x.grad
    assert torch.isfinite(grads["unrolled"]).all()
    if dtype == torch.float64:
        scale = grads["implicit"].abs().max()
        assert (grads["implicit"] - grads["unrolled"]).abs().max() <= 1e-6 * scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backward", ["implicit", "unrolled"])
def test_half_precision_costs_are_solved_in_float32(dtype, backward):
    # solved in bfloat16 itself, μ = 0.3 came out as a transported mass of 0.49
    low = _two_group_costs(torch.float32).to(dtype).requires_grad_(True)
    rho, pi = gsp_transport(low, 0.3, 50.0, backward=backward)
    assert rho.dtype == dtype and pi.dtype == dtype
    ref_rho, ref_pi = gsp_transport(low.detach().float(), 0.3, 50.0)
    assert torch.allclose(pi.float(), ref_pi, rtol=1e-2, atol=1e-6)
    assert torch.allclose(rho.float(), ref_rho, rtol=1e-2, atol=1e-6)
    (pi.float().square().sum() + rho.float().sum()).backward()
    assert low.grad.dtype == dtype and torch.isfinite(low.grad.float()).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backward", ["implicit", "unrolled"])
def test_keeps_dtype(dtype, backward):
    rho, pi = gsp_transport(_costs(dtype=dtype), 0.4, 5.0, backward=backward)
    assert rho.dtype == dtype and pi.dtype == dtype
    assert rho.shape == (3, 6) and pi.shape == (3, 4, 6)


def test_mu_one_is_exact_special_case():
    c = _costs()
    rho, pi = gsp_transport(c, 1.0, 5.0)
    assert torch.equal(rho, torch.zeros_like(rho))
    torch.testing.assert_close(pi, torch.softmax(-5.0 * c, 1) / 6, rtol=0, atol=1e-16)
    torch.testing.assert_close(transport_weights(rho, 1.0), torch.ones_like(rho))


def test_gamma_to_zero_gives_uniform_weights():
    c = _costs(seed=5)
    rho, pi = gsp_transport(c, 0.3, 1e-9)
    torch.testing.assert_close(transport_weights(rho, 0.3), torch.ones_like(rho),
                               rtol=0, atol=1e-7)


def test_selection_keeps_the_cheap_features():
    # Half the features sit on a prototype (cost 0), half far away (cost 2): with μ = 1/2 and a
    # sharp kernel all transported mass goes to the cheap half, which gets weight 1/μ = 2.
    n = 8
    c = torch.full((1, 3, n), 2.0, dtype=torch.float64)
    c[:, 0, : n // 2] = 0.0
    rho, _ = gsp_transport(c, 0.5, 20.0)
    w = transport_weights(rho, 0.5)[0]
    torch.testing.assert_close(w[: n // 2], torch.full((n // 2,), 2.0, dtype=c.dtype),
                               rtol=0, atol=1e-6)
    assert w[n // 2:].max() < 1e-6


@pytest.mark.parametrize(("dtype", "offset"), [(torch.float32, 12.0), (torch.float64, 100.0)])
def test_plan_ignores_a_constant_added_to_every_cost(dtype, offset):
    # β absorbs exp(γ offset), so the plan and its gradient are unchanged; the offset pushes the
    # unshifted kernel sums below sqrt(tiny), so this pits the shifted path against the
    # unshifted one.
    c = 2.0 * torch.rand(3, 8, 10, generator=torch.Generator().manual_seed(4), dtype=dtype)
    c = (c * 256).round() / 256  # so that c + offset is exact in float32 too
    grads = []
    for costs in (c.clone(), c + offset):
        costs.requires_grad_(True)
        rho, pi = gsp_transport(costs, 0.3, 5.0)
        (rho.square().sum() + pi.sin().sum()).backward()
        grads.append((rho.detach(), pi.detach(), costs.grad))
    # float32: γ (c + offset) ~ 70 carries ~4e-6 absolute rounding into every exponent, and
    # the gradient is a difference of such terms
    tol = 5e-4 if dtype == torch.float32 else 1e-10
    for a, b in zip(*grads, strict=True):
        assert (a - b).abs().max() <= tol * a.abs().max()


@pytest.mark.parametrize("gamma", [0.1, 1.0, 5.0, 20.0, 50.0])
@pytest.mark.parametrize("backward", ["implicit", "unrolled"])
def test_finite_for_costs_in_0_2(gamma, backward):
    g = torch.Generator().manual_seed(2)
    cases = [
        2.0 * torch.rand(4, 16, 49, generator=g),
        torch.full((2, 16, 49), 2.0),  # every cost maximal
        torch.zeros(2, 16, 49),  # every cost zero
        torch.cat([torch.zeros(1, 16, 1), torch.full((1, 16, 48), 2.0)], dim=2),  # one near
        torch.cat([torch.zeros(1, 1, 49), torch.full((1, 15, 49), 2.0)], dim=1),
    ]
    for c in cases:
        c = c.clone().requires_grad_(True)
        rho, pi = gsp_transport(c, 0.3, gamma, backward=backward)
        loss = (rho * torch.randn(rho.shape, generator=g)).sum() + (
            pi * torch.randn(pi.shape, generator=g)).sum()
        loss.backward()
        assert torch.isfinite(rho).all() and torch.isfinite(pi).all()
        assert torch.isfinite(c.grad).all()


# ----------------------------------------------------------------------------- gradients
def _random_objective(seed):
    g = torch.Generator().manual_seed(seed)

    def objective(rho, pi):
        a = torch.randn(rho.shape, generator=torch.Generator().manual_seed(seed), dtype=rho.dtype)
        b = torch.randn(pi.shape, generator=torch.Generator().manual_seed(seed + 1),
                        dtype=pi.dtype)
        return (a * rho).sum() + (b * pi).sum() + (pi.sum(2) ** 2).sum()

    del g
    return objective


@pytest.mark.parametrize("mu,gamma", [(0.3, 5.0), (0.7, 1.0), (0.1, 20.0), (1.0, 3.0)])
def test_implicit_and_unrolled_gradients_agree_and_match_finite_differences(mu, gamma):
    objective = _random_objective(7)
    c0 = _costs(b=2, k=3, n=5, seed=11)
    grads = {}
    for mode in ("implicit", "unrolled"):
        c = c0.clone().requires_grad_(True)
        objective(*gsp_transport(c, mu, gamma, iters=5000, backward=mode)).backward()
        grads[mode] = c.grad
    torch.testing.assert_close(grads["implicit"], grads["unrolled"], rtol=1e-7, atol=1e-10)
    # Central differences in float64 on every entry.
    eps = 1e-6
    fd = torch.zeros_like(c0)
    for idx in range(c0.numel()):
        d = torch.zeros(c0.numel(), dtype=c0.dtype)
        d[idx] = eps
        d = d.view_as(c0)
        up = objective(*gsp_transport(c0 + d, mu, gamma, iters=5000))
        dn = objective(*gsp_transport(c0 - d, mu, gamma, iters=5000))
        fd.view(-1)[idx] = (up - dn) / (2 * eps)
    torch.testing.assert_close(grads["implicit"], fd, rtol=1e-6, atol=1e-8)


def test_gradcheck_implicit():
    c = _costs(b=2, k=3, n=4, seed=13).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: gsp_transport(x, 0.4, 3.0, iters=5000), (c,))


def test_vjp_is_plain_tensor_code():
    # The closed form needs only the outputs; feeding the unrolled solution gives the same.
    c = _costs(seed=17)
    rho, pi = gsp_transport(c, 0.3, 5.0)
    g0, g1 = torch.randn_like(rho), torch.randn_like(pi)
    out = gsp.transport_vjp(rho, pi, g0, g1, 5.0)
    cc = c.clone().requires_grad_(True)
    r2, p2 = gsp_transport(cc, 0.3, 5.0, iters=5000, backward="unrolled")
    (g0 * r2).sum().add((g1 * p2).sum()).backward()
    torch.testing.assert_close(out, cc.grad, rtol=1e-7, atol=1e-12)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("mu", [0.0, -0.1, 1.0001, 2.0, float("nan")])
def test_bad_mu(mu):
    with pytest.raises(ValueError, match="mu"):
        gsp_transport(_costs(), mu, 5.0)
    with pytest.raises(ValueError, match="mu"):
        GSP(4, 3, 2, mu=mu)


@pytest.mark.parametrize("gamma", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_gamma(gamma):
    with pytest.raises(ValueError, match="gamma"):
        gsp_transport(_costs(), 0.3, gamma)


@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 4, 5), (6,)])
def test_bad_cost_rank(shape):
    with pytest.raises(ValueError, match=r"\(B, K, n\)"):
        gsp_transport(torch.rand(shape), 0.3, 5.0)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="iters"):
        gsp_transport(_costs(), 0.3, 5.0, iters=0)
    with pytest.raises(ValueError, match="backward"):
        gsp_transport(_costs(), 0.3, 5.0, backward="auto")
    with pytest.raises(ValueError, match="floating"):
        gsp_transport(torch.ones(2, 3, 4, dtype=torch.long), 0.3, 5.0)
    with pytest.raises(ValueError, match="conv map"):
        GSP(4, 3, 2)(torch.rand(2, 4, 5))


# ----------------------------------------------------------------------------- geometry helpers
def test_unit_ball():
    x = torch.tensor([[0.3, 0.4], [3.0, 4.0], [0.0, 0.0]])
    torch.testing.assert_close(unit_ball(x), torch.tensor([[0.3, 0.4], [0.6, 0.8], [0.0, 0.0]]))


def test_prototype_costs_are_unit_ball_euclidean():
    g = torch.Generator().manual_seed(0)
    f = 2 * torch.randn(2, 7, 5, generator=g, dtype=torch.float64)
    w = torch.randn(3, 5, generator=g, dtype=torch.float64)
    ref = torch.cdist(unit_ball(f), unit_ball(w).expand(2, 3, 5)).transpose(1, 2)
    c = prototype_costs(f, w)
    torch.testing.assert_close(c, ref)
    assert c.min() >= 0 and c.max() <= 2 + 1e-12


def test_k_center_exact_and_two_approximation():
    pts = torch.tensor([[0.0], [1.0], [2.0], [10.0], [9.5]])
    assert k_center(pts, 2).tolist() == [0, 3]
    assert k_center(pts, 3).tolist() == [0, 3, 2]
    # Greedy k-centre radius is within 2x of the optimum (brute force on a small set).
    from itertools import combinations

    p = torch.randn(9, 2, generator=torch.Generator().manual_seed(4))

    def radius(idx):
        return torch.cdist(p, p[list(idx)]).min(1).values.max().item()

    best = min(radius(s) for s in combinations(range(9), 3))
    assert radius(k_center(p, 3).tolist()) <= 2 * best + 1e-9
    with pytest.raises(ValueError, match="k must"):
        k_center(p, 10)


# ----------------------------------------------------------------------------- the layer
def test_layer_mu_one_equals_gap():
    torch.manual_seed(0)
    layer = GSP(6, 4, num_prototypes=5, mu=1.0, gamma=5.0).double()
    x = torch.randn(3, 6, 5, 5, dtype=torch.float64)
    gap = layer.proj(x).mean((2, 3))
    torch.testing.assert_close(layer(x), gap, rtol=0, atol=1e-15)
    out = layer(x, return_maps=True)
    torch.testing.assert_close(out.pooled, gap, rtol=0, atol=1e-15)
    assert torch.equal(out.weights, torch.ones_like(out.weights))


def test_layer_outputs_and_invariants():
    torch.manual_seed(1)
    layer = GSP(6, 4, num_prototypes=5, mu=0.3, gamma=5.0).double()
    x = torch.randn(3, 6, 4, 5, dtype=torch.float64)
    out = layer(x, return_maps=True)
    assert out.pooled.shape == (3, 4) and out.weights.shape == (3, 4, 5)
    assert out.prototype_maps.shape == (3, 5, 4, 5) and out.histogram.shape == (3, 5)
    w = out.weights.flatten(1)
    torch.testing.assert_close(w.mean(1), torch.ones(3, dtype=x.dtype))
    assert w.min() >= 0 and w.max() <= 1 / 0.3 + 1e-12
    torch.testing.assert_close(out.histogram.sum(1), torch.ones(3, dtype=x.dtype))
    torch.testing.assert_close(out.prototype_maps.sum(1), 0.3 * out.weights)
    f = layer.local_features(x)
    torch.testing.assert_close(out.pooled, (w.unsqueeze(-1) * f).mean(1))
    torch.testing.assert_close(layer(x), out.pooled)


def test_layer_prototypes_are_k_centres_of_first_batch():
    torch.manual_seed(2)
    layer = GSP(3, 4, num_prototypes=6)
    x = torch.randn(2, 3, 4, 4)
    assert not bool(layer.initialized)
    layer(x)
    assert bool(layer.initialized)
    pts = unit_ball(layer.local_features(x).reshape(-1, 4)).detach()
    torch.testing.assert_close(layer.prototypes.detach(), pts[k_center(pts, 6)])
    before = layer.prototypes.detach().clone()
    layer(torch.randn(2, 3, 4, 4))  # later batches never re-initialise
    assert torch.equal(before, layer.prototypes.detach())


def test_layer_gradcheck_float64():
    torch.manual_seed(3)
    layer = GSP(3, 2, num_prototypes=3, mu=0.5, gamma=4.0, iters=5000).double()
    x = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    # Prototype norms 0.5 and 1.7: away from the unit-ball kink at norm 1, where k-centre
    # initialised prototypes sit and finite differences would straddle the corner.
    protos = F.normalize(torch.randn(3, 2, dtype=torch.float64), dim=1)
    protos = (protos * torch.tensor([[0.5], [1.7], [0.5]], dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda inp, w: _layer_with_prototypes(layer, inp, w),
                                    (x, protos.requires_grad_(True)))


def _layer_with_prototypes(layer, x, prototypes):
    f = layer.local_features(x)
    rho, pi = gsp_transport(prototype_costs(f, prototypes), layer.mu, layer.gamma, layer.iters)
    return torch.einsum("bn,bnd->bd", pi.sum(1) / layer.mu, f)


def test_layer_implicit_equals_unrolled_gradients():
    torch.manual_seed(4)
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64)
    grads = []
    for mode in ("implicit", "unrolled"):
        torch.manual_seed(5)
        layer = GSP(5, 4, num_prototypes=4, mu=0.3, gamma=5.0, backward=mode).double()
        layer(x).square().sum().backward()
        grads.append([p.grad for p in layer.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


# ----------------------------------------------------------------------------- zero-shot loss
def _primal_zsr(z, y_lab, classes, lam, scale, ia, ib):
    def pred(a, b):
        za = z[a]
        w = torch.linalg.solve(za.T @ za + lam * torch.eye(z.shape[1], dtype=z.dtype),
                               za.T @ classes[y_lab[a]])
        return z[b] @ w

    lb = F.cross_entropy(scale * pred(ia, ib) @ classes.T, y_lab[ib])
    la = F.cross_entropy(scale * pred(ib, ia) @ classes.T, y_lab[ia])
    return 0.5 * (la + lb)


@pytest.mark.parametrize("split", ["halves", "interleave"])
def test_zsr_matches_primal_ridge(split):
    g = torch.Generator().manual_seed(0)
    z = torch.softmax(torch.randn(8, 5, generator=g, dtype=torch.float64), 1)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    cls = torch.randn(4, 6, generator=g, dtype=torch.float64)
    got = zero_shot_prediction_loss(z, y, cls, lam=0.05, scale=9.5, split=split)
    idx = torch.arange(8)
    ia, ib = (idx[:4], idx[4:]) if split == "halves" else (idx[0::2], idx[1::2])
    torch.testing.assert_close(got, _primal_zsr(z, y, cls, 0.05, 9.5, ia, ib))


def test_zsr_rewards_semantic_histograms():
    # Histograms that are a fixed linear code of the class make unseen classes predictable.
    torch.manual_seed(0)
    classes = torch.randn(4, 8, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]).repeat(2)
    code = torch.softmax(3 * torch.randn(4, 6, dtype=torch.float64), 1)
    z_sem = code[y]
    z_rand = torch.softmax(3 * torch.randn(16, 6, dtype=torch.float64), 1)
    l_sem = zero_shot_prediction_loss(z_sem, y, classes, split="interleave")
    l_rand = zero_shot_prediction_loss(z_rand, y, classes, split="interleave")
    assert l_sem < l_rand


def test_zsr_module_and_combination_with_pml():
    from pytorch_metric_learning.losses import ContrastiveLoss

    torch.manual_seed(0)
    emb = torch.randn(8, 4)
    z = torch.softmax(torch.randn(8, 5), 1)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    zsr = ZeroShotPredictionLoss(4, 6)
    dml = ContrastiveLoss(pos_margin=0, neg_margin=1)
    combo = GSPMetricLoss(dml, zsr, weight=0.1)
    expect = 0.9 * dml(emb, y) + 0.1 * zsr(z, y)
    torch.testing.assert_close(combo(emb, y, z), expect)
    torch.testing.assert_close(GSPMetricLoss(dml)(emb, y, z), dml(emb, y))
    combo(emb, y, z).backward()
    assert zsr.class_embeddings.grad is not None
    with pytest.raises(ValueError, match="labels"):
        zsr(z, torch.tensor([0, 1, 2, 3, 4, 5, 6, 7]))
    with pytest.raises(ValueError, match="split"):
        zero_shot_prediction_loss(z, y, zsr.class_embeddings, split="odd")


def test_transport_iterations_diagnostic():
    assert transport_iterations(_costs(), 1.0, 5.0) == 0
    assert 1 <= transport_iterations(_costs(), 0.3, 5.0) < 100
    assert math.isfinite(float(transport_iterations(_costs(), 0.3, 50.0)))


# ----------------------------------------------------------------------------- a training run
def _distractor_maps(num, g, signals, nuisances, hw=4, keep=2):
    """Maps (num, C, hw, hw): the class's signal vector at ``keep`` random cells, every other
    cell a random nuisance vector with a random scale in [0, 3] (the "background")."""
    c, n = signals.shape[1], hw * hw
    y = torch.randint(0, signals.shape[0], (num,), generator=g)
    x = nuisances[torch.randint(0, len(nuisances), (num, n), generator=g)]
    x = x * (3 * torch.rand(num, n, 1, generator=g))
    pos = torch.rand(num, n, generator=g).argsort(1)[:, :keep]
    x[torch.arange(num)[:, None], pos] = signals[y][:, None, :].expand(-1, keep, -1)
    return x.transpose(1, 2).reshape(num, c, hw, hw), y


def _train_neck(mu, seed=0, steps=60):
    g = torch.Generator().manual_seed(seed)
    signals = 2 * F.normalize(torch.randn(4, 8, generator=g), dim=1)
    nuisances = F.normalize(torch.randn(12, 8, generator=g), dim=1)  # span all of R^8
    xtr, ytr = _distractor_maps(512, g, signals, nuisances)
    xte, yte = _distractor_maps(512, g, signals, nuisances)
    torch.manual_seed(seed)
    neck = GSP(8, 8, num_prototypes=8, mu=mu, gamma=5.0)
    proxies = torch.nn.Parameter(torch.randn(4, 8))
    neck(xtr[:64])  # k-centre initialisation
    opt = torch.optim.Adam([*neck.parameters(), proxies], lr=1e-2)
    for _ in range(steps):
        idx = torch.randint(0, 512, (64,), generator=g)
        logits = 10 * F.normalize(neck(xtr[idx]), dim=1) @ F.normalize(proxies, dim=1).T
        loss = F.cross_entropy(logits, ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (F.normalize(neck(xte), dim=1) @ F.normalize(proxies, dim=1).T).argmax(1)
    return (pred == yte).float().mean().item()


def test_training_gsp_beats_gap_when_most_cells_are_distractors():
    # 2 of 16 cells carry the class; nuisances span the whole space, so no linear projection
    # after averaging can remove them, but transport can drop the cells (μ = 1/4 keeps 4).
    gap = _train_neck(1.0)
    gsp_acc = _train_neck(0.25)
    assert gsp_acc > 0.95
    assert gsp_acc > gap + 0.08


def test_unconverged_solve_warns_and_implicit_saves_no_plan():
    costs = 2.0 * torch.rand(2, 3, 50, generator=torch.Generator().manual_seed(0))
    with pytest.warns(RuntimeWarning, match="did not converge"):
        gsp_transport(costs, 0.99, 5.0, iters=3)
    c = costs.clone().requires_grad_(True)
    sizes = []

    def pack(t):
        sizes.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        rho, pi = gsp_transport(c, 0.3, 5.0)
    # costs (the input) and three (B, n) vectors; the (B, K, n) plan is rebuilt in backward
    assert sorted(sizes, key=len) == [(2, 50)] * 3 + [(2, 3, 50)]


def test_layer_keeps_half_precision_dtype():
    layer = GSP(4, 6, 3, mu=0.5, gamma=5.0)
    x = torch.randn(2, 4, 3, 3)
    layer(x)
    out = layer(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), layer(x), atol=0.05)


def test_layer_gradients_are_finite_when_a_map_cell_is_zero():
    # A 7x7 cell that ReLU zeroed in every channel gives a local feature exactly at 0: the
    # unit-ball scale max(1, ‖f‖) must not put sqrt'(0) = inf into the gradient (this made a
    # multi-similarity run go NaN after 22 steps).
    torch.manual_seed(0)
    layer = GSP(8, 6, num_prototypes=4, mu=0.3, gamma=5.0)
    fmap = torch.rand(2, 8, 3, 3)
    fmap[:, :, 1, 1] = 0.0
    fmap.requires_grad_(True)
    layer(fmap).square().sum().backward()
    grads = [fmap.grad, layer.proj.weight.grad, layer.prototypes.grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_zsr_on_bfloat16_histograms_runs_in_float32():
    # under CUDA bf16 autocast the layer hands back bf16 histograms; bf16 has no linear solve
    torch.manual_seed(0)
    layer = GSP(6, 8, num_prototypes=4, mu=0.3)
    maps = torch.randn(4, 6, 3, 3)
    layer(maps)  # prototypes from a float32 batch
    hist = layer(maps.bfloat16(), return_maps=True).histogram
    assert hist.dtype == torch.bfloat16
    zsr = ZeroShotPredictionLoss(3, 8)
    labels = torch.tensor([0, 0, 1, 1])
    loss = zsr(hist, labels)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(zsr.class_embeddings.grad).all()
    torch.testing.assert_close(loss, zsr(hist.float(), labels))


def test_prototypes_wait_for_a_batch_with_enough_local_features():
    torch.manual_seed(0)
    layer = GSP(6, 4, num_prototypes=20, mu=0.3)
    fallback = layer.prototypes.detach().clone()
    with pytest.warns(RuntimeWarning, match="cannot seed K=20"):
        out = layer(torch.randn(1, 6, 3, 3))  # 9 local features < K
    assert out.shape == (1, 4) and not bool(layer.initialized)
    assert torch.equal(layer.prototypes, fallback)
    batch = torch.randn(4, 6, 3, 3)
    layer(batch)
    assert bool(layer.initialized)
    points = unit_ball(layer.local_features(batch).reshape(-1, 4))
    torch.testing.assert_close(layer.prototypes.detach(), points[k_center(points, 20)])


# ----------------------------------------------------------------------------- reading a trained layer

def _one_image_costs():
    return 2 * torch.rand(4, 9, generator=torch.Generator().manual_seed(0))


def test_weight_map_matches_solver():
    c = _one_image_costs()
    w, maps = gsp.weight_map(c, 0.3, 5.0, (3, 3))
    rho, pi = gsp_transport(c[None].double(), 0.3, 5.0)
    torch.testing.assert_close(w, transport_weights(rho, 0.3)[0].reshape(3, 3).float())
    assert maps.shape == (4, 3, 3)
    torch.testing.assert_close(maps.sum(0), 0.3 * w)
    with pytest.raises(ValueError, match="n = h\\*w"):
        gsp.weight_map(c, 0.3, 5.0, (2, 2))


def test_image_one_image_costs():
    torch.manual_seed(0)
    backbone = nn.Conv2d(1, 4, 3, padding=1, stride=4)
    neck = GSP(4, 3, 5)
    image = torch.rand(1, 12, 12)
    costs, shape = gsp.image_costs(backbone, neck, image)
    assert costs.shape == (5, 9) and shape == (3, 3)
    assert costs.min() >= 0 and costs.max() <= 2
    with pytest.raises(ValueError, match="GSP"):
        gsp.image_costs(backbone, nn.Identity(), image)


def test_selective_gamma_is_where_mu_changes_the_kept_share():
    # costs spread as narrowly as a trained layer's (std ~0.1): at γ = 5 every μ keeps all cells
    torch.manual_seed(0)
    costs = 0.9 + 0.1 * torch.randn(8, 49)
    kept = {}
    for gamma in (5.0, gsp.selective_gamma(costs)):
        kept[gamma] = [float((gsp.weight_map(costs, mu, gamma, (7, 7))[0] > 0.5).float().mean())
                       for mu in (0.15, 0.85)]
    assert kept[5.0] == [1.0, 1.0]
    assert kept[gsp.selective_gamma(costs)][0] < 0.7 < kept[gsp.selective_gamma(costs)][1]
    with pytest.raises(ValueError, match="all equal"):
        gsp.selective_gamma(torch.ones(3, 4))


def test_weight_grid_feeds_the_slider_with_weight_map_per_setting():
    import numpy as np

    from labkit.viz.gsp import weight_map_slider  # the slider the grid feeds

    costs = _one_image_costs()
    mus, gammas = (1.0, 0.5, 0.2), (2.0, gsp.selective_gamma(costs))
    grid = gsp.weight_grid(costs, (3, 3), mus, gammas)
    assert set(grid) == {(m, g) for m in mus for g in gammas}
    fig = weight_map_slider(torch.rand(1, 12, 12), grid)
    assert len(fig.frames) == len(mus) * len(gammas)
    order = sorted(grid, key=lambda key: (key[1], -key[0]))  # the slider's step order
    for frame, (mu, gamma) in zip(fig.frames, order, strict=True):
        assert frame.name == f"μ={mu:g} γ={gamma:g}"
        expected = gsp.weight_map(costs, mu, gamma, (3, 3))[0].numpy()
        np.testing.assert_allclose(np.asarray(frame.data[1].z), expected, atol=1e-4)
    # different settings give different maps, so moving the slider changes the data
    assert not np.allclose(fig.frames[-1].data[1].z, fig.frames[0].data[1].z)
    with pytest.raises(ValueError, match="at least one"):
        gsp.weight_grid(costs, (3, 3), (), gammas)
    with pytest.raises(ValueError, match="mu"):
        gsp.weight_grid(costs, (3, 3), (1.5,), gammas)
