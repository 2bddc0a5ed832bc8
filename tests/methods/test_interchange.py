"""Tests of the interchangeable-embeddings method module: maps, similarity indices, open set."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.stats import norm
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.metrics import r2_score as sk_r2
from sklearn.metrics import roc_auc_score
from torch import nn

from labkit.methods import interchange as ic


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype)


def _orthogonal(d: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(_randn(d, d, seed=seed))
    return q


def _planted(n: int = 300, d_src: int = 6, d_dst: int = 5, seed: int = 0):
    x = _randn(n, d_src, seed=seed) * torch.linspace(0.5, 2.0, d_src, dtype=torch.float64) + 3.0
    m = _randn(d_dst, d_src, seed=seed + 1)
    t = _randn(d_dst, seed=seed + 2)
    return x, x @ m.T + t, m, t


# ----------------------------------------------------------------------------- closed-form map

def test_head_map_reproduces_source_logits_exactly_when_rank_is_c():
    c, d_a, d_b = 10, 64, 128
    w_a, b_a = _randn(c, d_a, seed=1), _randn(c, seed=2)
    w_b, b_b = _randn(c, d_b, seed=3), _randn(c, seed=4)
    f_a = _randn(200, d_a, seed=5)
    m = ic.map_from_heads(w_a, b_a, w_b, b_b)
    assert m.info["exact"] is True
    assert m.weight.shape == (d_b, d_a) and m.bias.shape == (d_b,)
    assert m.weight.dtype == torch.float64
    mapped_logits = m(f_a) @ w_b.T + b_b
    source_logits = f_a @ w_a.T + b_a
    assert torch.allclose(mapped_logits, source_logits, atol=1e-10, rtol=0)
    assert torch.equal(mapped_logits.argmax(1), source_logits.argmax(1))


def test_head_map_is_only_least_squares_when_target_dim_below_classes():
    c, d_a, d_b = 10, 16, 4
    w_a, b_a = _randn(c, d_a, seed=1), _randn(c, seed=2)
    w_b, b_b = _randn(c, d_b, seed=3), _randn(c, seed=4)
    f_a = _randn(500, d_a, seed=5)
    m = ic.map_from_heads(w_a, b_a, w_b, b_b)
    assert m.info["exact"] is False
    mapped_logits = m(f_a) @ w_b.T + b_b
    source_logits = f_a @ w_a.T + b_a
    residual = source_logits - mapped_logits
    assert residual.abs().max() > 0.1
    # least squares: the logit residual is orthogonal to everything B's head can produce
    assert torch.allclose(residual @ w_b, torch.zeros(500, d_b, dtype=torch.float64), atol=1e-9)
    assert (mapped_logits.argmax(1) == source_logits.argmax(1)).double().mean() < 0.9


def test_head_map_not_exact_for_rank_deficient_target_head():
    w_b = _randn(5, 20, seed=1)
    w_b[4] = 2 * w_b[0]  # two classes' rows collinear: rank 4 < C = 5 despite d_B >= C
    assert not ic.head_map_is_exact(w_b)
    assert ic.head_map_is_exact(_randn(5, 20, seed=2))


def test_head_map_without_biases_and_float32_networks():
    torch.manual_seed(0)
    a, b = nn.Linear(12, 5), nn.Linear(20, 5)
    net_a, net_b = nn.Module(), nn.Module()
    net_a.head, net_b.head = a, b
    m = ic.map_from_networks(net_a, net_b)
    assert m.weight.dtype == torch.float32
    f = torch.randn(50, 12)
    with torch.no_grad():
        assert torch.allclose(b(m(f)), a(f), atol=1e-4)
    no_bias = ic.map_from_heads(a.weight.detach(), None, b.weight.detach(), None)
    assert torch.count_nonzero(no_bias.bias) == 0


def test_head_map_rejects_mismatched_classes():
    w_a, w_b = _randn(5, 8), _randn(6, 8)
    with pytest.raises(ValueError, match="different numbers of classes"):
        ic.map_from_heads(w_a, None, w_b, None)
    with pytest.raises(ValueError, match="different order"):
        ic.map_from_heads(w_a, None, _randn(5, 8, seed=1), None,
                          src_classes=list("abcde"), dst_classes=list("abced"))
    with pytest.raises(ValueError, match="b_src"):
        ic.map_from_heads(w_a, torch.zeros(4), _randn(5, 8), None)
    with pytest.raises(ValueError, match="nn.Linear"):
        ic.map_from_networks(nn.Identity(), nn.Identity())


# ----------------------------------------------------------------------------- fitted maps

@pytest.mark.parametrize("method,options", [("affine", {}), ("ridge", {"alpha": 1e-9}),
                                            ("reduced_rank", {"rank": 5})])
def test_fitted_maps_recover_planted_affine_relation(method, options):
    x, y, m, t = _planted()
    fitted = ic.fit_map(x, y, method, **options)
    assert fitted.weight.dtype == torch.float64 and fitted.bias.dtype == torch.float64
    assert torch.allclose(fitted.weight, m, atol=1e-7)
    assert torch.allclose(fitted.bias, t, atol=1e-6)
    assert ic.r2_score(fitted(x), y) == pytest.approx(1.0, abs=1e-12)


def test_affine_and_ridge_match_sklearn_on_noisy_data():
    x, y, _, _ = _planted(n=120, seed=3)
    y = y + _randn(*y.shape, seed=9)
    ols = ic.fit_map(x, y, "affine")
    ref = LinearRegression().fit(x.numpy(), y.numpy())
    assert np.allclose(ols.weight.numpy(), ref.coef_, atol=1e-9)
    assert np.allclose(ols.bias.numpy(), ref.intercept_, atol=1e-9)
    ridge = ic.fit_map(x, y, "ridge", alpha=7.0)
    ref = Ridge(alpha=7.0).fit(x.numpy(), y.numpy())
    assert np.allclose(ridge.weight.numpy(), ref.coef_, atol=1e-9)
    assert np.allclose(ridge.bias.numpy(), ref.intercept_, atol=1e-9)
    assert ridge.info["alpha"] == 7.0
    # stronger ridge shrinks the map
    assert ic.fit_map(x, y, "ridge", alpha=1e3).weight.norm() < ridge.weight.norm()
    ridge0 = ic.fit_map(x, y, "ridge", alpha=0.0)
    assert torch.allclose(ridge0.weight, ols.weight, atol=1e-10)


def test_affine_without_bias_fits_through_origin_and_handles_dead_units():
    x, y, _, _ = _planted(n=80, seed=4)
    x = torch.cat([x, torch.zeros(80, 2, dtype=torch.float64)], 1)  # dead units: rank-deficient
    fitted = ic.fit_map(x, y, "affine", bias=False)
    assert torch.count_nonzero(fitted.bias) == 0
    ref, *_ = np.linalg.lstsq(x.numpy(), y.numpy(), rcond=None)
    assert np.allclose(fitted.weight.numpy(), ref.T, atol=1e-9)
    assert torch.count_nonzero(fitted.weight[:, -2:]) == 0  # minimum-norm: dead units get 0


def test_procrustes_matches_scipy():
    x, y = _randn(90, 7, seed=1), _randn(90, 7, seed=2) + 0.5 * _randn(90, 7, seed=1)
    r, _ = scipy.linalg.orthogonal_procrustes(x.numpy(), y.numpy())
    no_bias = ic.fit_map(x, y, "procrustes", bias=False)
    assert np.allclose(no_bias.weight.T.numpy(), r, atol=1e-12)
    xc, yc = x - x.mean(0), y - y.mean(0)
    rc, sigma = scipy.linalg.orthogonal_procrustes(xc.numpy(), yc.numpy())
    centred = ic.fit_map(x, y, "procrustes")
    assert np.allclose(centred.weight.T.numpy(), rc, atol=1e-12)
    assert np.allclose((centred.weight @ centred.weight.T).numpy(), np.eye(7), atol=1e-12)
    assert torch.allclose(centred.bias, y.mean(0) - centred.weight @ x.mean(0))
    scaled = ic.fit_map(x, y, "procrustes", scale=True)
    s = sigma / float((xc * xc).sum())
    assert np.allclose(scaled.weight.T.numpy(), s * rc, atol=1e-12)
    assert ((scaled(x) - y) ** 2).sum() <= ((centred(x) - y) ** 2).sum()


def test_procrustes_recovers_planted_rotation_and_is_below_general_map_on_non_rotations():
    x = _randn(200, 6, seed=1)
    q, t = _orthogonal(6, seed=2), _randn(6, seed=3)
    fitted = ic.fit_map(x, x @ q.T + t, "procrustes")
    assert torch.allclose(fitted.weight, q, atol=1e-10)
    assert torch.allclose(fitted.bias, t, atol=1e-10)
    stretched = x @ (q * torch.linspace(0.3, 3, 6, dtype=torch.float64)).T
    r2_rot = ic.r2_score(ic.fit_map(x, stretched, "procrustes")(x), stretched)
    r2_lin = ic.r2_score(ic.fit_map(x, stretched, "affine")(x), stretched)
    assert r2_lin == pytest.approx(1.0) and r2_rot < 0.95


def test_reduced_rank_is_the_best_rank_k_fit():
    x, _, _, _ = _planted(n=150, d_src=8, seed=5)
    y = x @ _randn(6, 8, seed=6).T + 0.3 * _randn(150, 6, seed=7)
    ols = ic.fit_map(x, y, "affine")
    full_rank = ic.fit_map(x, y, "reduced_rank", rank=6)
    assert torch.allclose(full_rank.weight, ols.weight, atol=1e-10)
    k = 2
    rrr = ic.fit_map(x, y, "reduced_rank", rank=k)
    assert int(torch.linalg.matrix_rank(rrr.weight)) == k
    # closed-form loss: OLS residual + the discarded squared singular values of the fitted values
    yhat = ols(x) - y.mean(0)
    s = torch.linalg.svdvals(yhat)
    sse = lambda m: float(((m(x) - y) ** 2).sum())  # noqa: E731
    assert sse(rrr) == pytest.approx(sse(ols) + float((s[k:] ** 2).sum()), rel=1e-10)
    # beats the naive alternative of truncating the OLS weight's own SVD, and random rank-k maps
    u, sv, vh = torch.linalg.svd(ols.weight)
    naive_w = u[:, :k] @ torch.diag(sv[:k]) @ vh[:k]
    naive = ic.EmbeddingMap(naive_w, y.mean(0) - naive_w @ x.mean(0))
    assert sse(rrr) < sse(naive)
    u, sv, vh = torch.linalg.svd(rrr.weight)
    left, right = u[:, :k] * sv[:k], vh[:k]
    for seed in range(5):  # nearby rank-k maps: perturb both factors
        w = (left + 0.05 * _randn(6, k, seed=seed)) @ (right + 0.05 * _randn(k, 8, seed=seed + 9))
        assert sse(rrr) <= sse(ic.EmbeddingMap(w, y.mean(0) - w @ x.mean(0)))


def test_fit_map_keeps_dtype_and_maps_new_data():
    x, y, _, _ = _planted()
    for dtype in (torch.float32, torch.float64):
        fitted = ic.fit_map(x.to(dtype), y.to(dtype), "ridge")
        assert fitted.weight.dtype == dtype and fitted(x.to(dtype)).dtype == dtype
        assert fitted(x.to(dtype)).shape == y.shape
    fitted = ic.fit_map(x.numpy(), y.numpy())
    assert fitted.weight.dtype == torch.float64


def test_fit_map_rejects_bad_input():
    x, y, _, _ = _planted()
    with pytest.raises(ValueError, match="rows"):
        ic.fit_map(x, y[:-1])
    with pytest.raises(ValueError, match="unknown map method"):
        ic.fit_map(x, y, "cca")
    with pytest.raises(ValueError, match="does not take"):
        ic.fit_map(x, y, "affine", alpha=1.0)
    with pytest.raises(ValueError, match="equal dims"):
        ic.fit_map(x, y, "procrustes")
    with pytest.raises(ValueError, match="rank"):
        ic.fit_map(x, y, "reduced_rank")
    with pytest.raises(ValueError, match="rank must be in"):
        ic.fit_map(x, y, "reduced_rank", rank=6)
    with pytest.raises(ValueError, match=">= 0"):
        ic.fit_map(x, y, "ridge", alpha=-1)
    with pytest.raises(ValueError, match="NaN"):
        ic.fit_map(x * float("nan"), y)
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        ic.fit_map(x[0], y[0])
    with pytest.raises(ValueError, match="6-d"):
        ic.fit_map(x, y)(y)


# ----------------------------------------------------------------------------- controls, accuracy

def test_identity_and_shuffled_controls():
    x, y, _, _ = _planted(n=2000, d_src=5)
    ident = ic.identity_map(5, dtype=torch.float64)
    assert torch.equal(ident(x), x)
    shuffled = ic.shuffled_fit(x, y, "affine", seed=1)
    assert shuffled.method == "shuffled-affine"
    assert ic.r2_score(shuffled(x), y) < 0.02  # no correspondence left: nothing explained
    assert ic.r2_score(ic.fit_map(x, y)(x), y) == pytest.approx(1.0)


def test_r2_matches_sklearn_variance_weighted():
    y, p = _randn(50, 4, seed=1), _randn(50, 4, seed=2) * 0.3 + _randn(50, 4, seed=1)
    assert ic.r2_score(p, y) == pytest.approx(sk_r2(y.numpy(), p.numpy(),
                                                    multioutput="variance_weighted"), rel=1e-12)
    with pytest.raises(ValueError, match="no variance"):
        ic.r2_score(p, torch.ones(50, 4, dtype=torch.float64))


def test_mapped_accuracy_and_retention():
    # B's head separates classes along axis 0; A's space is B's rotated: a fitted map restores it
    n = 400
    labels = torch.arange(n) % 2
    f_b = _randn(n, 3, seed=1) * 0.2
    f_b[:, 0] += 2.0 * labels - 1.0
    q = _orthogonal(3, seed=4)
    f_a = f_b @ q  # f_b = f_a q^T
    head = (torch.tensor([[-1.0, 0, 0], [1.0, 0, 0]], dtype=torch.float64), None)
    acc_b = ic.mapped_accuracy(ic.identity_map(3, torch.float64), f_b, head, labels)
    fitted = ic.fit_map(f_a, f_b, "procrustes")
    acc_ab = ic.mapped_accuracy(fitted, f_a, head, labels)
    assert acc_ab == acc_b and ic.retention(acc_ab, acc_b) == 1.0
    linear_head = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        linear_head.weight.copy_(head[0].float())
    assert ic.mapped_accuracy(fitted, f_a, linear_head, labels) == acc_ab
    assert ic.retention(0.45, 0.9) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ic.retention(0.5, 0.0)
    with pytest.raises(ValueError, match="labels"):
        ic.mapped_accuracy(fitted, f_a, head, labels[:-1])


# ----------------------------------------------------------------------------- similarity indices

def _cka_hsic(x: torch.Tensor, y: torch.Tensor) -> float:
    n = x.shape[0]
    h = torch.eye(n, dtype=x.dtype) - 1.0 / n
    k, l = x @ x.T, y @ y.T  # noqa: E741
    hsic = lambda a, b: torch.trace(a @ h @ b @ h) / (n - 1) ** 2  # noqa: E731
    return float(hsic(k, l) / torch.sqrt(hsic(k, k) * hsic(l, l)))


def test_linear_cka_properties():
    x = _randn(100, 8, seed=1)
    y = x[:, :5] @ _randn(5, 6, seed=2) + 0.5 * _randn(100, 6, seed=3)
    cka = ic.linear_cka(x, y)
    assert 0 < cka < 1
    assert cka == pytest.approx(_cka_hsic(x, y), rel=1e-10)
    assert ic.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert ic.linear_cka(x @ _orthogonal(8, seed=4), y) == pytest.approx(cka, rel=1e-10)
    assert ic.linear_cka(x * 13.0 + 2.0, y * 0.01) == pytest.approx(cka, rel=1e-10)
    # but not invariant to an anisotropic (invertible) map
    stretch = torch.diag(torch.logspace(-2, 2, 8, dtype=torch.float64))
    assert abs(ic.linear_cka(x @ stretch, y) - cka) > 1e-2
    assert isinstance(ic.linear_cka(x.float(), y.float()), float)
    with pytest.raises(ValueError, match="rows"):
        ic.linear_cka(x, y[:-1])
    with pytest.raises(ValueError, match="constant"):
        ic.linear_cka(torch.ones(100, 3), y)


def _unbiased_hsic_gram(x: torch.Tensor, y: torch.Tensor) -> float:
    """Song et al.'s HSIC_1 written out on the n x n Gram matrices with zeroed diagonals."""
    n = x.shape[0]
    k, l = x @ x.T, y @ y.T  # noqa: E741
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    one = torch.ones(n, dtype=x.dtype)
    value = (torch.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
             - 2 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3))
    return float(value)


def _unbiased_hsic_tuples(x: torch.Tensor, y: torch.Tensor) -> float:
    """The same estimate as a U-statistic: the mean over ordered 4-tuples of distinct rows of
    ((x_i - x_j).(x_q - x_r)) ((y_i - y_j).(y_q - y_r)) / 4, by explicit loops."""
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(x.shape[0]), 4):
        total += float((x[i] - x[j]) @ (x[q] - x[r])) * float((y[i] - y[j]) @ (y[q] - y[r])) / 4
        count += 1
    return total / count


def _independent_pair(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = _gen(seed)
    return (torch.randn(n, d, generator=gen, dtype=torch.float64),
            torch.randn(n, d, generator=gen, dtype=torch.float64))


def test_debiased_cka_is_near_zero_on_independent_inputs_where_the_biased_one_is_not():
    # issue 16's acceptance check: n = 32 rows, d = 64 in both spaces, 50 seeded draws
    pairs = [_independent_pair(32, 64, seed) for seed in range(50)]
    biased = np.mean([ic.linear_cka(x, y) for x, y in pairs])
    debiased = np.mean([ic.linear_cka(x, y, debiased=True) for x, y in pairs])
    assert biased > 0.5
    assert abs(debiased) < 0.02


def test_debiased_cka_agrees_with_the_biased_one_at_large_n_and_is_one_on_identical_inputs():
    x = _randn(2000, 8, seed=1)
    y = x[:, :5] @ _randn(5, 6, seed=2) + 0.5 * _randn(2000, 6, seed=3)
    biased, debiased = ic.linear_cka(x, y), ic.linear_cka(x, y, debiased=True)
    assert 0.3 < debiased < 1
    assert abs(biased - debiased) < 2e-3
    small_x, small_y = x[:20], y[:20]  # at small n the two differ by much more
    assert abs(ic.linear_cka(small_x, small_y) - ic.linear_cka(small_x, small_y, debiased=True)) > 2e-2
    assert ic.linear_cka(x, x, debiased=True) == pytest.approx(1.0, abs=1e-12)
    assert ic.linear_cka(x[:6], x[:6], debiased=True) == pytest.approx(1.0, abs=1e-12)


def test_debiased_cka_invariances_and_dtype():
    x = _randn(60, 8, seed=1)
    y = x[:, :5] @ _randn(5, 6, seed=2) + 0.8 * _randn(60, 6, seed=3)
    cka = ic.linear_cka(x, y, debiased=True)
    assert ic.linear_cka(x @ _orthogonal(8, seed=4), y @ _orthogonal(6, seed=5),
                         debiased=True) == pytest.approx(cka, rel=1e-10)
    assert ic.linear_cka(x * 13.0 + 2.0, y * 0.01 - 5.0, debiased=True) == pytest.approx(cka, rel=1e-10)
    stretch = torch.diag(torch.logspace(-2, 2, 8, dtype=torch.float64))
    assert abs(ic.linear_cka(x @ stretch, y, debiased=True) - cka) > 1e-2
    # float32 inputs are computed in float64: the same value to float32 rounding of the inputs
    single = ic.linear_cka(x.float(), y.float(), debiased=True)
    assert isinstance(single, float) and single == pytest.approx(cka, rel=1e-5)


def test_debiased_cka_matches_the_unbiased_hsic_formula_by_hand():
    x = _randn(7, 3, seed=1) + 4.0  # not centred: the estimator must not depend on it
    y = 0.5 * x[:, :2] + _randn(7, 2, seed=2) - 1.0
    hsic_xy = _unbiased_hsic_gram(x, y)
    assert hsic_xy == pytest.approx(_unbiased_hsic_tuples(x, y), rel=1e-9)
    expected = hsic_xy / math.sqrt(_unbiased_hsic_gram(x, x) * _unbiased_hsic_gram(y, y))
    assert ic.linear_cka(x, y, debiased=True) == pytest.approx(expected, rel=1e-10)
    bigger_x, bigger_y = _randn(40, 5, seed=3), _randn(40, 3, seed=4)
    expected = _unbiased_hsic_gram(bigger_x, bigger_y) / math.sqrt(
        _unbiased_hsic_gram(bigger_x, bigger_x) * _unbiased_hsic_gram(bigger_y, bigger_y))
    assert ic.linear_cka(bigger_x, bigger_y, debiased=True) == pytest.approx(expected, rel=1e-10)


def test_both_cka_estimators_reproduce_the_values_printed_in_kornbliths_demo():
    # google-research/google-research, representation_similarity/Demo.ipynb: X = randn(100, 10),
    # Y = randn(100, 10) + X after np.random.seed(1337); its stored outputs print 0.55761
    # (linear CKA) and 0.51346 (debiased), from examples and from features alike
    rs = np.random.RandomState(1337)
    x = rs.randn(100, 10)
    y = rs.randn(100, 10) + x
    assert round(ic.linear_cka(x, y), 5) == 0.55761
    assert round(ic.linear_cka(x, y, debiased=True), 5) == 0.51346


def test_debiased_cka_never_returns_nan_at_the_smallest_n():
    # a mean over products of squares: |debiased CKA| <= 1, and it may be negative
    values = [ic.linear_cka(*_independent_pair(n, 3, seed), debiased=True)
              for n in (4, 5, 6) for seed in range(30)]
    assert all(math.isfinite(v) and -1 - 1e-12 <= v <= 1 + 1e-12 for v in values)
    assert min(values) < 0 < max(values)


def test_debiased_cka_refuses_inputs_whose_self_hsic_vanishes():
    y = _randn(4, 2, seed=1)
    with pytest.raises(ValueError, match="constant"):
        ic.linear_cka(torch.ones(4, 3, dtype=torch.float64), y, debiased=True)
    # not constant, yet every 4-tuple of distinct rows has two equal rows: HSIC_1(K, K) = 0
    three_equal_rows = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [0.3, -4.0]],
                                    dtype=torch.float64)
    with pytest.raises(ValueError, match="unbiased HSIC"):
        ic.linear_cka(three_equal_rows, y, debiased=True)
    with pytest.raises(ValueError, match="unbiased HSIC"):
        ic.linear_cka(y, three_equal_rows * 1e6 + 3.0, debiased=True)
    assert math.isfinite(ic.linear_cka(three_equal_rows, y))  # the biased estimator is defined


def test_debiased_cka_needs_four_rows():
    x, y = _independent_pair(3, 2, seed=0)
    with pytest.raises(ValueError, match="at least 4"):
        ic.linear_cka(x, y, debiased=True)
    assert math.isfinite(ic.linear_cka(x, y))


def _cca_reference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = x - x.mean(0), y - y.mean(0)
    sxx, syy, sxy = x.T @ x, y.T @ y, x.T @ y
    m = np.linalg.solve(sxx, sxy) @ np.linalg.solve(syy, sxy.T)
    eig = np.sort(np.linalg.eigvals(m).real)[::-1][: min(x.shape[1], y.shape[1])]
    return np.sqrt(np.clip(eig, 0, 1))


def test_cca_correlations_match_covariance_formula_and_invariances():
    x = _randn(300, 5, seed=1)
    y = torch.cat([x[:, :2] + 0.3 * _randn(300, 2, seed=2), _randn(300, 2, seed=3)], 1)
    rho = ic.cca_correlations(x, y)
    assert rho.dtype == torch.float64 and rho.shape == (4,)
    assert np.allclose(rho.numpy(), _cca_reference(x.numpy(), y.numpy()), atol=1e-10)
    invertible = _randn(5, 5, seed=7) + 3 * torch.eye(5, dtype=torch.float64)
    assert ic.mean_cca(x @ invertible, y) == pytest.approx(ic.mean_cca(x, y), rel=1e-10)
    assert ic.mean_cca(x, x @ invertible) == pytest.approx(1.0, abs=1e-10)
    with pytest.raises(ValueError, match="more samples"):
        ic.mean_cca(x[:8], y[:8])


def test_cca_correlations_warn_that_they_are_inflated_when_n_is_not_well_above_the_dims():
    # independent Gaussians, p1 = p2 = 16: at n = 5 (p1 + p2) the mean CCA is ~0.27, not 0
    x, y = _independent_pair(160, 16, seed=0)
    with pytest.warns(UserWarning, match="inflated"):
        floor = ic.mean_cca(x, y)
    assert floor > 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ic.mean_cca(*_independent_pair(1000, 16, seed=0))  # n = 31 (p1 + p2): no warning
        # dead units do not count: the rule reads the numerical ranks, not the widths
        dead = torch.zeros(200, 30, dtype=torch.float64)
        x, y = _independent_pair(200, 4, seed=1)
        ic.cca_correlations(torch.cat([x, dead], 1), y)
    with pytest.raises(ValueError, match="more samples"):
        ic.cca_correlations(*_independent_pair(32, 16, seed=0))


def test_svcca_drops_low_variance_directions():
    shared = _randn(400, 4, seed=1)
    # each space adds two tiny, unrelated directions: CCA counts them, SVCCA's 99% cut drops them
    x = torch.cat([shared, 1e-3 * _randn(400, 2, seed=2)], 1)
    y = torch.cat([shared @ _randn(4, 4, seed=3), 1e-3 * _randn(400, 2, seed=4)], 1)
    assert ic.svcca(x, y, keep=0.99) == pytest.approx(1.0, abs=1e-6)
    assert ic.mean_cca(x, y) < 0.8
    with pytest.raises(ValueError, match="keep"):
        ic.svcca(x, y, keep=0.0)


def test_procrustes_distance():
    x = _randn(120, 5, seed=1)
    q = _orthogonal(5, seed=2)
    assert ic.procrustes_distance(x, 3.0 * x @ q + 1.0) == pytest.approx(0.0, abs=1e-6)
    y = x @ q + 0.7 * _randn(120, 5, seed=3)
    d = ic.procrustes_distance(x, y)
    xc, yc = x - x.mean(0), y - y.mean(0)
    xn, yn = xc / xc.norm(), yc / yc.norm()
    r, _ = scipy.linalg.orthogonal_procrustes(xn.numpy(), yn.numpy())
    assert d == pytest.approx(np.linalg.norm(xn.numpy() @ r - yn.numpy()), rel=1e-10)
    # unequal dims: same as zero-padding the smaller space
    y3 = y[:, :3]
    padded = torch.cat([y3, torch.zeros(120, 2, dtype=torch.float64)], 1)
    assert ic.procrustes_distance(x, y3) == pytest.approx(ic.procrustes_distance(x, padded))
    assert 0 < d <= math.sqrt(2)


# ----------------------------------------------------------------------------- open set

def test_pair_scores_and_roc():
    emb = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    scores, genuine = ic.pair_scores(emb, emb, labels, labels, exclude_diagonal=True)
    assert scores.shape == (12,) and int(genuine.sum()) == 4
    assert scores.dtype == torch.float64
    metrics = ic.verification_metrics(scores, genuine)
    assert metrics["auc"] == 1.0 and metrics["eer"] == 0.0 and metrics["tar@far=0.01"] == 1.0
    with pytest.raises(ValueError, match="map the probes"):
        ic.pair_scores(emb, emb[:, :1], labels, labels)
    with pytest.raises(ValueError, match="genuine and impostor"):
        ic.roc(scores[genuine], genuine[genuine])


def test_eer_and_tar_on_hand_example():
    scores = torch.tensor([0.9, 0.8, 0.3, 0.7, 0.2, 0.1])
    genuine = torch.tensor([True, True, True, False, False, False])
    far, tar, _ = ic.roc(scores, genuine)
    assert ic.equal_error_rate(far, tar) == pytest.approx(1 / 3)
    assert ic.tar_at_far(far, tar, 0.0) == pytest.approx(2 / 3)
    assert ic.tar_at_far(far, tar, 0.5) == pytest.approx(1.0)
    assert ic.verification_metrics(scores, genuine)["auc"] == pytest.approx(
        roc_auc_score(genuine.numpy(), scores.numpy()))


def test_eer_and_tar_match_gaussian_theory():
    mu, n = 2.0, 200_000
    scores = torch.cat([_randn(n, seed=1) + mu, _randn(n, seed=2)])
    genuine = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
    m = ic.verification_metrics(scores, genuine, fars=(1e-2,))
    assert m["eer"] == pytest.approx(norm.cdf(-mu / 2), abs=3e-3)
    assert m["tar@far=0.01"] == pytest.approx(norm.sf(norm.isf(1e-2) - mu), abs=6e-3)


def test_recall_at_1_excludes_self_matches():
    emb = torch.tensor([[1.0, 0], [0, 1.0], [0.9, 0.2], [0.2, 0.9]])
    labels = torch.tensor([0, 1, 1, 0])  # nearest other image always has the other class
    assert ic.recall_at_1(emb, labels, emb, labels) == 1.0  # trivial self-match
    assert ic.recall_at_1(emb, labels, emb, labels, exclude_diagonal=True) == 0.0


def test_open_set_report_native_vs_mapped():
    n = 300
    labels = torch.arange(n) % 6
    centres = _randn(6, 8, seed=1) * 2
    f_a = centres[labels] + 0.6 * _randn(n, 8, seed=2)
    q = _orthogonal(8, seed=3)
    f_b = f_a @ q.T  # B's space is A's rotated: the Procrustes map is exact
    rep = ic.open_set_report(f_a, f_b, labels, ic.fit_map(f_a, f_b, "procrustes", bias=False))
    assert set(rep) == {"native_src", "native_dst", "mapped"}
    for key in ("auc", "eer", "tar@far=0.01", "tar@far=0.001", "recall@1"):
        assert rep["mapped"][key] == pytest.approx(rep["native_dst"][key], abs=1e-9)
        assert rep["native_src"][key] == pytest.approx(rep["native_dst"][key], abs=1e-9)
    unmapped = ic.open_set_report(f_a, f_b, labels, ic.identity_map(8, torch.float64))
    assert unmapped["mapped"]["eer"] > rep["mapped"]["eer"] + 0.1
    assert unmapped["mapped"]["recall@1"] < rep["mapped"]["recall@1"]


def test_score_protocol_returns_the_roc_its_metrics_come_from():
    labels = torch.arange(60) % 3
    probes = _randn(3, 4, seed=5)[labels] + 0.8 * _randn(60, 4, seed=6)
    gallery = probes + 0.3 * _randn(60, 4, seed=7)
    metrics, far, tar = ic.score_protocol(probes, gallery, labels)
    scores, genuine = ic.pair_scores(probes, gallery, labels, labels, exclude_diagonal=True)
    assert metrics == pytest.approx({**ic.verification_metrics(scores, genuine),
                                     "recall@1": ic.recall_at_1(probes, labels, gallery, labels,
                                                                exclude_diagonal=True)})
    assert ic.roc_metrics(far, tar) == pytest.approx(ic.verification_metrics(scores, genuine))
    assert far[0] == 0.0 and far[-1] == 1.0 and (np.diff(far) >= 0).all()


def test_reduced_rank_ridge_minimises_the_penalised_loss_among_rank_k_maps():
    x, _, _, _ = _planted(n=120, d_src=8, seed=11)
    y = x @ _randn(6, 8, seed=12).T + 0.5 * _randn(120, 6, seed=13)
    alpha, k = 30.0, 2
    ridge = ic.fit_map(x, y, "ridge", alpha=alpha)
    assert torch.allclose(ic.fit_map(x, y, "reduced_rank", rank=6, alpha=alpha).weight,
                          ridge.weight, atol=1e-10)
    rrr = ic.fit_map(x, y, "reduced_rank", rank=k, alpha=alpha)
    xc, yc = x - x.mean(0), y - y.mean(0)

    def loss(w):  # the centred ridge objective the map minimises over rank-k weights
        return float(((xc @ w.T - yc) ** 2).sum() + alpha * (w ** 2).sum())

    u, sv, vh = torch.linalg.svd(rrr.weight)
    left, right = u[:, :k] * sv[:k], vh[:k]
    for seed in range(5):
        w = (left + 0.05 * _randn(6, k, seed=seed)) @ (right + 0.05 * _randn(k, 8, seed=seed + 3))
        assert loss(rrr.weight) <= loss(w)
    # projecting the ridge fit on its own fitted values' top-k subspace is strictly worse
    _, _, vh = torch.linalg.svd(xc @ ridge.weight.T, full_matrices=False)
    plain = (ridge.weight.T @ vh[:k].T @ vh[:k]).T
    assert loss(rrr.weight) < loss(plain) - 1e-3


# ----------------------------------------------------------------------------- the zoo's networks

@pytest.mark.parametrize("arch", ic.ZOO_ARCHS)
def test_zoo_networks_follow_the_network_contract(arch):
    net = ic.build_zoo_network(arch, in_channels=1, num_classes=10, feat_dim=12)
    out = net.forward_all(torch.rand(3, 1, 28, 28))
    assert out.feature_map.ndim == 4 and out.embedding.shape == (3, 12)
    assert out.logits.shape == (3, 10)
    assert isinstance(net.head, nn.Linear) and net.head.bias is not None
    # the full profile's CIFAR shape, open-set variant without a head
    cifar = ic.build_zoo_network(arch, 3, 10, 8, image_size=32, head=None)
    assert cifar.head is None and cifar(torch.rand(2, 3, 32, 32)).shape == (2, 8)


def test_unknown_zoo_architecture_and_head():
    with pytest.raises(ValueError, match="unknown zoo architecture"):
        ic.build_zoo_network("alexnet")
    with pytest.raises(ValueError, match="head must be"):
        ic.build_zoo_network("mlp", head="cosine")


def test_cosface_objective_trains_its_class_weights():
    objective = ic.CosFaceObjective(num_classes=3, dim=4)
    embedding = torch.randn(6, 4, requires_grad=True)
    loss = objective.from_embedding(embedding, torch.tensor([0, 1, 2, 0, 1, 2]))
    loss.backward()
    assert loss.item() > 0 and embedding.grad is not None
    assert all(p.grad is not None for p in objective.parameters())
