"""Interchangeable CNN embedding spaces (McNeely-White, Sattelberg, Blanchard, Beveridge;
arXiv 2010.02323). The maths, the defaults, the reference implementations it was checked
against and every deviation from the paper are in docs/methods/interchange.md.

The claim: the penultimate embeddings of different CNNs trained on the same task are (almost)
linear maps of each other. Mapping network A's embedding f_A into B's space with an affine map
f_B ~ M f_A + t keeps most of the accuracy of B's own head (closed set) and of B's verification
scores on identities never seen in training (open set).

This module holds the method's pure pieces:

* maps: `map_from_heads` (closed form from the logit layers, M = W_B^+ W_A, t = W_B^+ (b_A - b_B))
  and `fit_map` (least-squares affine, ridge, orthogonal Procrustes, reduced-rank regression),
  both returning an `EmbeddingMap` (weight (d_dst, d_src), bias (d_dst,));
* controls: `identity_map`, `shuffled_rows` and `shuffled_fit` (correspondences destroyed);
* measures: `r2_score`, `mapped_accuracy`, `retention`, `linear_cka`, `cca_correlations` /
  `mean_cca` / `svcca`, `procrustes_distance`;
* open-set verification and retrieval: `pair_scores`, `roc`, `tar_at_far`, `equal_error_rate`,
  `verification_metrics`, `roc_metrics`, `roc_on_grid`, `recall_at_1`, `score_protocol`,
  `open_set_report`;
* summaries: `SIMILARITY_INDICES` (the indices E3 compares), `spearman`, `off_diagonal_median`;
* the zoo's networks: `build_zoo_network` (backbone -> embedding -> linear head with a bias) and
  `CosFaceObjective` (the open-set members' loss).

What the lab measures on a trained zoo (maps between its members, retention, controls, the
similarity indices per pair, open-set scores) is in `labkit.methods.interchange_analysis`.

The paper's full text was not available to us: details reconstructed from its abstracts and a
third-party review (the closed-form map's notation, the fitting objective, the open-set
protocol) are marked UNVERIFIED in the docstrings and listed on the method page.
Every computation keeps the input dtype (float64 in, float64 out); the debiased CKA is
computed in float64 whatever the input.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit.core.models import (
    FlattenLinear,
    Network,
    PooledLinear,
    build_backbone,
    build_network,
    map_shape,
)

__all__ = [
    "EmbeddingMap",
    "METHODS",
    "as_matrix",
    "fit_map",
    "map_from_heads",
    "map_from_networks",
    "head_map_is_exact",
    "identity_map",
    "shuffled_rows",
    "shuffled_fit",
    "r2_score",
    "head_logits",
    "mapped_accuracy",
    "retention",
    "linear_cka",
    "cca_correlations",
    "mean_cca",
    "svcca",
    "procrustes_distance",
    "pair_scores",
    "roc",
    "tar_at_far",
    "equal_error_rate",
    "verification_metrics",
    "roc_metrics",
    "score_protocol",
    "recall_at_1",
    "open_set_report",
    "roc_on_grid",
    "SIMILARITY_INDICES",
    "spearman",
    "off_diagonal_median",
    "ZOO_ARCHS",
    "build_zoo_network",
    "CosFaceObjective",
]

METHODS = ("affine", "ridge", "procrustes", "reduced_rank")


# ----------------------------------------------------------------------------- the map object

@dataclass
class EmbeddingMap:
    """An affine map x -> weight @ x + bias between embedding spaces.

    weight: (d_dst, d_src); bias: (d_dst,). `method` names how it was obtained; `info` keeps
    fit facts (e.g. `exact` for the closed-form map, `rank`, `alpha`). Calling it on (N, d_src)
    returns (N, d_dst) in the input's dtype.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    method: str = "affine"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weight.ndim != 2:
            raise ValueError(f"weight must be (d_dst, d_src), got shape {tuple(self.weight.shape)}")
        if self.bias.shape != (self.weight.shape[0],):
            raise ValueError(f"bias must be (d_dst,) = ({self.weight.shape[0]},), got "
                             f"{tuple(self.bias.shape)}")

    @property
    def src_dim(self) -> int:
        return int(self.weight.shape[1])

    @property
    def dst_dim(self) -> int:
        return int(self.weight.shape[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = as_matrix(x, "x")
        if x.shape[1] != self.src_dim:
            raise ValueError(f"this map takes {self.src_dim}-d embeddings, got {x.shape[1]}-d")
        weight, bias = self.weight.to(x), self.bias.to(x)
        return torch.addmm(bias, x, weight.T)

    def to(self, *args, **kwargs) -> EmbeddingMap:
        return EmbeddingMap(self.weight.to(*args, **kwargs), self.bias.to(*args, **kwargs),
                            self.method, dict(self.info))

    def __repr__(self) -> str:
        return (f"EmbeddingMap(method={self.method!r}, {self.src_dim} -> {self.dst_dim}, "
                f"dtype={self.weight.dtype})")


# ----------------------------------------------------------------------------- input checks

def as_matrix(x: Any, name: str = "x") -> torch.Tensor:
    """`x` as a finite floating tensor (N, d); numpy arrays are accepted; ints become float32."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be a matrix (N, d) of N embeddings, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _paired(src: Any, dst: Any, what: str = "src and dst") -> tuple[torch.Tensor, torch.Tensor]:
    """Two matrices whose row i embeds the same input; a common float dtype."""
    src, dst = as_matrix(src, "src"), as_matrix(dst, "dst")
    if src.shape[0] != dst.shape[0]:
        raise ValueError(f"{what} must hold embeddings of the same inputs row by row, but have "
                         f"{src.shape[0]} and {dst.shape[0]} rows")
    if src.device != dst.device:
        raise ValueError(f"{what} are on different devices ({src.device} and {dst.device})")
    dtype = torch.promote_types(src.dtype, dst.dtype)
    return src.to(dtype), dst.to(dtype)


def _default_rcond(x: torch.Tensor) -> float:
    # numpy's lstsq/pinv convention: singular values below max(N, d) * eps * s_max count as zero.
    return max(x.shape) * torch.finfo(x.dtype).eps


def _check_options(method: str, options: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"fit_map(method={method!r}) does not take {sorted(unknown)}; "
                         f"its options are {sorted(allowed)}")


# ----------------------------------------------------------------------------- fitted maps

def _ridge_coef(xc: torch.Tensor, yc: torch.Tensor, alpha: float,
                rcond: float | None) -> torch.Tensor:
    """argmin_C ||xc C - yc||_F^2 + alpha ||C||_F^2, C (d_src, d_dst), via the SVD of xc.

    With alpha = 0 this is the minimum-norm least-squares solution (tiny singular values are
    dropped, as numpy's lstsq does), so rank-deficient embeddings (dead units) are fine.
    """
    u, s, vh = torch.linalg.svd(xc, full_matrices=False)
    if alpha > 0:
        factor = s / (s * s + alpha)
    else:
        cutoff = (rcond if rcond is not None else _default_rcond(xc)) * (s[0] if len(s) else 0)
        keep = s > cutoff
        factor = torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))
    return vh.T @ (factor[:, None] * (u.T @ yc))


def fit_map(src: Any, dst: Any, method: str = "affine", *, bias: bool = True,
            **options: Any) -> EmbeddingMap:
    """Fit an affine map from embeddings `src` (N, d_src) to `dst` (N, d_dst) of the same N inputs.

    method:
      * "affine": ordinary least squares, min ||Y - X M^T - t||^2 (minimum-norm if rank-deficient).
        Option `rcond` (singular-value cutoff, relative).
      * "ridge": min ||Y - X M^T - t||^2 + alpha ||M||_F^2, the bias unpenalised. Option `alpha`
        (default 1.0, the value a third-party review attributes to the paper; UNVERIFIED).
      * "procrustes": M orthogonal, scipy.linalg.orthogonal_procrustes on the centred data;
        needs d_src == d_dst. Option `scale` (default False, as scipy): M = s R with
        s = tr(Sigma) / ||X_c||_F^2.
      * "reduced_rank": min ||Y - X M^T - t||^2 subject to rank(M) <= `rank` (required), the
        classical reduced-rank regression (project the (ridge) fit onto the top-`rank` principal
        directions of its fitted values). Option `alpha` (default 0) for reduced-rank ridge.
        The paper reduces 512 -> 64 dims by a method we could not verify (PCA or RRR).

    bias=True centres both sets first and puts t = mean(Y) - M mean(X); bias=False fits through
    the origin (t = 0). Returns an `EmbeddingMap` in the inputs' dtype.
    """
    src, dst = _paired(src, dst)
    if method not in METHODS:
        raise ValueError(f"unknown map method {method!r}; use one of {METHODS}")
    n = src.shape[0]
    if n < (2 if bias else 1):
        raise ValueError(f"need at least {2 if bias else 1} pairs to fit a map, got {n}")
    mean_x = src.mean(0) if bias else src.new_zeros(src.shape[1])
    mean_y = dst.mean(0) if bias else dst.new_zeros(dst.shape[1])
    xc, yc = src - mean_x, dst - mean_y
    info: dict[str, Any] = {"n_pairs": n}

    if method == "affine":
        _check_options(method, options, {"rcond"})
        coef = _ridge_coef(xc, yc, 0.0, options.get("rcond"))
    elif method == "ridge":
        _check_options(method, options, {"alpha"})
        alpha = float(options.get("alpha", 1.0))
        if not alpha >= 0:
            raise ValueError(f"ridge alpha must be >= 0, got {alpha}")
        coef = _ridge_coef(xc, yc, alpha, None)
        info["alpha"] = alpha
    elif method == "procrustes":
        _check_options(method, options, {"scale"})
        if src.shape[1] != dst.shape[1]:
            raise ValueError(f"orthogonal Procrustes needs equal dims, got {src.shape[1]} -> "
                             f"{dst.shape[1]}; reduce both by PCA or use 'affine'/'reduced_rank'")
        from scipy.linalg import orthogonal_procrustes

        r, sigma_sum = orthogonal_procrustes(xc.detach().cpu().numpy(), yc.detach().cpu().numpy())
        coef = torch.from_numpy(np.asarray(r)).to(src)
        if options.get("scale", False):
            norm2 = float((xc * xc).sum())
            if norm2 == 0:
                raise ValueError("scaled Procrustes is undefined: src has no variance")
            coef = coef * (float(sigma_sum) / norm2)
            info["scale"] = float(sigma_sum) / norm2
    else:  # reduced_rank
        _check_options(method, options, {"rank", "alpha"})
        if "rank" not in options:
            raise ValueError("reduced_rank needs rank=k (1 <= k <= min(d_src, d_dst))")
        rank = int(options["rank"])
        if not 1 <= rank <= min(src.shape[1], dst.shape[1]):
            raise ValueError(f"rank must be in 1..{min(src.shape[1], dst.shape[1])}, got {rank}")
        alpha = float(options.get("alpha", 0.0))
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        full = _ridge_coef(xc, yc, alpha, None)
        # Eckart-Young on the fitted values: for OLS the residual is orthogonal to col(X), so the
        # best rank-k fit of Y is the best rank-k approximation of Y_hat = X C. With a ridge
        # penalty the same holds for the augmented data [X; sqrt(alpha) I] (reduced-rank ridge,
        # Mukherjee & Zhu 2011), whose fitted values are [X C; sqrt(alpha) C].
        fitted = xc @ full if alpha == 0 else torch.cat([xc @ full, math.sqrt(alpha) * full])
        _, _, vh = torch.linalg.svd(fitted, full_matrices=False)
        v_k = vh[:rank].T
        coef = full @ v_k @ v_k.T
        info.update(rank=rank, alpha=alpha)

    weight = coef.T.contiguous()
    return EmbeddingMap(weight, mean_y - weight @ mean_x, method, info)


# ----------------------------------------------------------------------------- closed-form map

def _head_params(weight: Any, bias: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    w = as_matrix(weight, f"W_{name}")
    if bias is None:
        return w, w.new_zeros(w.shape[0])
    b = torch.as_tensor(bias)
    if b.shape != (w.shape[0],):
        raise ValueError(f"b_{name} must be ({w.shape[0]},) to match W_{name} {tuple(w.shape)}, "
                         f"got {tuple(b.shape)}")
    return w, b.to(w)


def head_map_is_exact(W_dst: Any, rcond: float | None = None) -> bool:
    """True when rank(W_dst) = C (rows), i.e. W_dst W_dst^+ = I_C: the closed-form map then
    reproduces the source logits exactly. Needs d_dst >= C."""
    w = as_matrix(W_dst, "W_dst")
    return int(torch.linalg.matrix_rank(w, rtol=rcond)) == w.shape[0]


def map_from_heads(W_src: Any, b_src: Any, W_dst: Any, b_dst: Any, *,
                   src_classes: Sequence[Any] | None = None,
                   dst_classes: Sequence[Any] | None = None,
                   rcond: float | None = None) -> EmbeddingMap:
    """The closed-form map from the logit layers: M = W_B^+ W_A, t = W_B^+ (b_A - b_B).

    W_src (C, d_A), W_dst (C, d_B); biases (C,) or None (no bias). With it, B's head applied to
    M f_A + t gives W_B W_B^+ (W_A f_A + b_A - b_B) + b_B, which equals A's logits exactly when
    rank(W_B) = C (`info["exact"]`); otherwise it is only their least-squares fit. The map
    reproduces logits, not B's real embedding of the image. The formula is our
    reconstruction from the abstract (the paper's exact derivation is UNVERIFIED).

    Both heads must score the same classes in the same order: pass `src_classes`/`dst_classes`
    (class names or ids) to have that checked.
    """
    w_a, b_a = _head_params(W_src, b_src, "src")
    w_b, b_b = _head_params(W_dst, b_dst, "dst")
    if w_a.shape[0] != w_b.shape[0]:
        raise ValueError(f"the heads score different numbers of classes ({w_a.shape[0]} vs "
                         f"{w_b.shape[0]}); both networks must be trained on the same classes")
    if (src_classes is None) != (dst_classes is None):
        raise ValueError("pass both src_classes and dst_classes, or neither")
    if src_classes is not None:
        if len(src_classes) != w_a.shape[0] or len(dst_classes) != w_b.shape[0]:
            raise ValueError(f"class lists have {len(src_classes)} and {len(dst_classes)} entries "
                             f"but the heads have {w_a.shape[0]} rows")
        if list(src_classes) != list(dst_classes):
            raise ValueError("the two heads list their classes in a different order "
                             f"({list(src_classes)} vs {list(dst_classes)}); the closed-form map "
                             "needs row k of both heads to be the same class (re-order one head)")
    dtype = torch.promote_types(w_a.dtype, w_b.dtype)
    w_a, b_a, w_b, b_b = (t.to(dtype) for t in (w_a, b_a, w_b, b_b))
    pinv = torch.linalg.pinv(w_b, rtol=rcond) if rcond is not None else torch.linalg.pinv(w_b)
    weight = pinv @ w_a
    info = {"exact": head_map_is_exact(w_b, rcond), "num_classes": int(w_b.shape[0])}
    return EmbeddingMap(weight, pinv @ (b_a - b_b), "heads", info)


def _linear_head(net: nn.Module) -> nn.Linear:
    head = getattr(net, "head", None)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"map_from_networks needs networks whose `.head` is an nn.Linear, got "
                         f"{type(head).__name__}")
    return head


def map_from_networks(net_src: nn.Module, net_dst: nn.Module, **kwargs: Any) -> EmbeddingMap:
    """`map_from_heads` with the `.head` (nn.Linear) of two labkit `Network`s."""
    a, b = _linear_head(net_src), _linear_head(net_dst)
    return map_from_heads(a.weight.detach(), None if a.bias is None else a.bias.detach(),
                          b.weight.detach(), None if b.bias is None else b.bias.detach(), **kwargs)


# ----------------------------------------------------------------------------- controls

def identity_map(dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> EmbeddingMap:
    """The identity as a map: the control that assumes two spaces already coincide."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return EmbeddingMap(torch.eye(dim, dtype=dtype, device=device),
                        torch.zeros(dim, dtype=dtype, device=device), "identity")


def shuffled_rows(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """x (N, d) with its rows in a seeded random order: paired with an unshuffled partner, it
    leaves no true correspondence (the controls' re-pairing)."""
    generator = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=generator).to(x.device)]


def shuffled_fit(src: Any, dst: Any, method: str = "affine", *, seed: int = 0,
                 **options: Any) -> EmbeddingMap:
    """Control: fit `method` on randomly re-paired rows (dst permuted), so no true correspondence
    is left; its accuracy through B's head should fall to about chance."""
    src, dst = _paired(src, dst)
    fitted = fit_map(src, shuffled_rows(dst, seed), method, **options)
    fitted.method = f"shuffled-{method}"
    fitted.info["seed"] = seed
    return fitted


# ----------------------------------------------------------------------------- accuracy measures

def r2_score(pred: Any, target: Any) -> float:
    """Variance-weighted R^2 = 1 - ||Y - Y_hat||_F^2 / ||Y - mean(Y)||_F^2 (both (N, d))."""
    pred, target = _paired(pred, target, "pred and target")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    total = ((target - target.mean(0)) ** 2).sum()
    if total == 0:
        raise ValueError("R^2 is undefined: the target has no variance")
    return float(1 - ((target - pred) ** 2).sum() / total)


HeadLike = nn.Module | Callable[[torch.Tensor], torch.Tensor] | tuple


def head_logits(head: HeadLike, embeddings: torch.Tensor) -> torch.Tensor:
    """Logits (N, C) from a head: an nn.Module / callable, or a (W (C, d), b (C,) | None) pair."""
    if isinstance(head, tuple):
        weight, bias = _head_params(head[0], head[1] if len(head) > 1 else None, "head")
        weight, bias = weight.to(embeddings), bias.to(embeddings)
        if embeddings.shape[1] != weight.shape[1]:
            raise ValueError(f"head takes {weight.shape[1]}-d embeddings, got {embeddings.shape[1]}-d")
        return embeddings @ weight.T + bias
    if isinstance(head, nn.Module):
        param = next(head.parameters(), None)
        if param is not None:
            with torch.no_grad():
                return head(embeddings.to(param)).to(embeddings.dtype)
    with torch.no_grad():
        return head(embeddings)


def mapped_accuracy(emb_map: Callable[[torch.Tensor], torch.Tensor], src_embeddings: Any,
                    dst_head: HeadLike, labels: Any) -> float:
    """Top-1 accuracy of B's head on A's embeddings mapped into B's space: acc(A -> B)."""
    src = as_matrix(src_embeddings, "src_embeddings")
    labels = torch.as_tensor(labels)
    if labels.shape != (src.shape[0],):
        raise ValueError(f"labels must be ({src.shape[0]},), got {tuple(labels.shape)}")
    logits = head_logits(dst_head, emb_map(src))
    return float((logits.argmax(1).cpu() == labels.cpu()).double().mean())


def retention(mapped_acc: float, target_acc: float) -> float:
    """acc(A -> B) / acc(B): the share of B's own accuracy that A's mapped embeddings keep."""
    if not 0 < target_acc <= 1 or not 0 <= mapped_acc <= 1:
        raise ValueError(f"accuracies must be in [0, 1] and target_acc > 0, got "
                         f"{mapped_acc} and {target_acc}")
    return mapped_acc / target_acc


# ----------------------------------------------------------------------------- similarity indices

def _centred_pair(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _paired(x, y, "X and Y")
    return x - x.mean(0), y - y.mean(0)


def _unbiased_hsic(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Song et al.'s (2012) unbiased HSIC_1 for linear kernels, K = X X^T and L = Y Y^T with
    zeroed diagonals, computed in feature space (no n x n matrix):

        HSIC_1 = [tr(K L) + 1^T K 1 1^T L 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K L 1] / (n(n-3)).

    x (n, p1), y (n, p2), n >= 4."""
    n = x.shape[0]
    sq_x, sq_y = (x * x).sum(1), (y * y).sum(1)  # diag(K), diag(L)
    trace_kl = torch.linalg.matrix_norm(x.T @ y) ** 2 - sq_x @ sq_y
    k_one, l_one = x @ x.sum(0) - sq_x, y @ y.sum(0) - sq_y
    sum_k, sum_l = k_one.sum(), l_one.sum()
    return (trace_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2 / (n - 2) * (k_one @ l_one)) / (n * (n - 3))


def linear_cka(X: Any, Y: Any, debiased: bool = False) -> float:
    """Linear CKA (Kornblith et al. 2019) of X (n, p1) and Y (n, p2), the same n inputs.

    debiased=False: ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F), i.e. the biased HSIC
    estimator; it is inflated unless n >> p (independent Gaussians, n = 32, p = 64: ~0.67).
    debiased=True: HSIC_1(K, L) / sqrt(HSIC_1(K, K) HSIC_1(L, L)) with the unbiased HSIC_1
    (Song et al. 2012; Nguyen, Raghu & Kornblith 2021), in float64, for n >= 4. It is ~0 on
    independent inputs, can be negative, and meets the biased value as n grows.

    For linear kernels HSIC_1 is the mean over 4-tuples of distinct rows of
    ((x_i - x_j).(x_q - x_r)) ((y_i - y_j).(y_q - y_r)) / 4, so |debiased CKA| <= 1 and a self
    term HSIC_1(K, K) is a mean of squares. It is 0 when no 4 distinct rows give a nonzero
    term (e.g. constant X, or all rows but one equal); rounding can then make it slightly
    negative. That term is the estimator's only denominator, so CKA is undefined there:
    ValueError, never NaN.

    Both are invariant to orthogonal maps and isotropic scaling (not to general invertible
    maps) and are 1 for identical inputs.
    """
    if not debiased:
        x, y = _centred_pair(X, Y)
        denom = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
        if denom == 0:
            raise ValueError("CKA is undefined when X or Y is constant (no variance)")
        return float(torch.linalg.matrix_norm(y.T @ x) ** 2 / denom)
    x, y = (t.double() for t in _paired(X, Y, "X and Y"))
    x, y = x - x.mean(0), y - y.mean(0)  # the estimator ignores shifts; centring cuts cancellation
    if x.shape[0] < 4:
        raise ValueError(f"the debiased CKA needs at least 4 rows, got {x.shape[0]}")
    return float(_unbiased_hsic(x, y) / torch.sqrt(_self_hsic(x, "X") * _self_hsic(y, "Y")))


def _self_hsic(t: torch.Tensor, name: str) -> torch.Tensor:
    """HSIC_1(K, K) of centred float64 t (n, p), refused when it is zero up to rounding."""
    if not t.any():
        raise ValueError(f"CKA is undefined when {name} is constant (no variance)")
    n, value = t.shape[0], _unbiased_hsic(t, t)
    # its terms are of size ||t||_F^4 / n^2: below rounding noise on that scale it is zero
    if value <= 64 * torch.finfo(t.dtype).eps * (t * t).sum() ** 2 / (n * (n - 3)):
        raise ValueError(f"the debiased CKA is undefined: the unbiased HSIC of {name} with itself "
                         f"is {float(value):.3g}, zero up to rounding (as when all its rows but one "
                         "are equal); use more varied rows or the biased estimator")
    return value


def _orthonormal_basis(xc: torch.Tensor, rcond: float | None = None) -> torch.Tensor:
    """Orthonormal basis (n, r) of col(xc); the SVD drops directions a QR would keep as noise
    when units are dead or collinear."""
    u, s, _ = torch.linalg.svd(xc, full_matrices=False)
    if len(s) == 0 or s[0] == 0:
        raise ValueError("CCA is undefined when X or Y is constant (no variance)")
    cutoff = (rcond if rcond is not None else _default_rcond(xc)) * s[0]
    return u[:, s > cutoff]


CCA_SAMPLES_PER_DIM = 10


def cca_correlations(X: Any, Y: Any) -> torch.Tensor:
    """Canonical correlations rho_1 >= ... >= rho_p (p = min of the two ranks), in the input dtype.

    They are the singular values of Q_X^T Q_Y for orthonormal bases of the centred data. CCA is
    invariant to any invertible linear map, so it is meaningless unless n >> p: n must exceed
    p1 + p2 (widths; below that the two column spaces intersect and correlations of 1 appear
    by construction), and a UserWarning says the correlations are inflated when n is below
    `CCA_SAMPLES_PER_DIM` = 10 times r1 + r2 (the numerical ranks). On independent Gaussians
    the mean CCA is ~0.19 at n = 10 (r1 + r2), ~0.27 at 5x and ~0.44 at 2x (20 draws, r1 = r2
    in 8..32); it only falls off like 1/sqrt(n/(r1 + r2)) above that.
    """
    x, y = _centred_pair(X, Y)
    n = x.shape[0]
    if n <= x.shape[1] + y.shape[1]:
        raise ValueError(f"CCA needs more samples than dims (n >> p1 + p2); got n={n}, "
                         f"p1={x.shape[1]}, p2={y.shape[1]}")
    qx, qy = _orthonormal_basis(x), _orthonormal_basis(y)
    dims = qx.shape[1] + qy.shape[1]
    if n < CCA_SAMPLES_PER_DIM * dims:
        warnings.warn(f"canonical correlations are inflated at n={n} for {dims} dims in all "
                      f"(ranks {qx.shape[1]} + {qy.shape[1]}): the mean CCA of independent data "
                      f"is far above 0 (~0.19 at n = {CCA_SAMPLES_PER_DIM * dims}, ~0.44 at "
                      f"n = {2 * dims}); compare with a shuffled-rows baseline or use more "
                      "samples", UserWarning, stacklevel=2)
    return torch.linalg.svdvals(qx.T @ qy).clamp(0, 1)


def mean_cca(X: Any, Y: Any) -> float:
    """Mean canonical correlation rho_bar = ||Q_Y^T Q_X||_* / p, p = min of the numerical ranks
    of the centred X and Y (not of their widths: dead or collinear units are not counted as
    zero correlations)."""
    return float(cca_correlations(X, Y).mean())


def _top_directions(xc: torch.Tensor, keep: float) -> torch.Tensor:
    u, s, _ = torch.linalg.svd(xc, full_matrices=False)
    share = torch.cumsum(s * s, 0) / (s * s).sum()
    count = int((share < keep).sum()) + 1
    return u[:, :count] * s[:count]


def svcca(X: Any, Y: Any, keep: float = 0.99) -> float:
    """SVCCA (Raghu et al. 2017): keep each space's top singular directions covering `keep` of its
    variance, then the mean canonical correlation of the reduced spaces."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    x, y = _centred_pair(X, Y)
    if (x * x).sum() == 0 or (y * y).sum() == 0:
        raise ValueError("SVCCA is undefined when X or Y is constant (no variance)")
    return mean_cca(_top_directions(x, keep), _top_directions(y, keep))


def procrustes_distance(X: Any, Y: Any) -> float:
    """Procrustes distance d = sqrt(2 - 2 ||X^T Y||_*) of the centred data scaled to unit
    Frobenius norm: min over orthogonal R of ||X R - Y||_F (zero-padding the smaller space).
    0 for spaces equal up to rotation and scale; at most sqrt(2)."""
    x, y = _centred_pair(X, Y)
    nx, ny = torch.linalg.matrix_norm(x), torch.linalg.matrix_norm(y)
    if nx == 0 or ny == 0:
        raise ValueError("the Procrustes distance is undefined when X or Y is constant")
    nuclear = torch.linalg.matrix_norm((x / nx).T @ (y / ny), ord="nuc")
    return float(torch.sqrt((2 - 2 * nuclear).clamp_min(0)))


SIMILARITY_INDICES: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "cka": linear_cka,
    "cka_debiased": functools.partial(linear_cka, debiased=True),
    "mean_cca": mean_cca,
    "svcca": svcca,
    "procrustes": procrustes_distance,
}  # the indices E3 compares with retention; the Procrustes distance is lower when similar


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (scipy)."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def off_diagonal_median(matrix: Any) -> float:
    """Median over the ordered pairs (i != j) of a square matrix."""
    m = np.asarray(matrix, dtype=float)
    return float(np.median(m[~np.eye(len(m), dtype=bool)]))


# ----------------------------------------------------------------------------- open set

def _labels(labels: Any, n: int, name: str) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.shape != (n,):
        raise ValueError(f"{name} must be ({n},) to match the embeddings, got {tuple(labels.shape)}")
    return labels


def pair_scores(probes: Any, gallery: Any, probe_labels: Any, gallery_labels: Any, *,
                exclude_diagonal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine scores of all probe x gallery pairs and whether each pair is genuine (same class).

    probes (P, d), gallery (G, d) in one space (e.g. M f_A(x) and f_B(y)). `exclude_diagonal`
    (needs P = G) drops pairs (i, i): when probes and gallery embed the same images, a pair of an
    image with itself is not a verification trial. Returns (scores (M,), genuine bool (M,)).
    Cosine similarity as the paper's score is our assumption (UNVERIFIED).
    """
    p, g = as_matrix(probes, "probes"), as_matrix(gallery, "gallery")
    if p.shape[1] != g.shape[1]:
        raise ValueError(f"probes are {p.shape[1]}-d but the gallery is {g.shape[1]}-d: map the "
                         "probes into the gallery's space first")
    lp, lg = _labels(probe_labels, p.shape[0], "probe_labels"), _labels(gallery_labels, g.shape[0],
                                                                         "gallery_labels")
    dtype = torch.promote_types(p.dtype, g.dtype)
    scores = F.normalize(p.to(dtype), dim=1) @ F.normalize(g.to(dtype), dim=1).T
    genuine = lp.to(g.device)[:, None] == lg.to(g.device)[None, :]
    if exclude_diagonal:
        if p.shape[0] != g.shape[0]:
            raise ValueError("exclude_diagonal needs as many probes as gallery items (same images)")
        keep = ~torch.eye(p.shape[0], dtype=torch.bool, device=g.device)
        return scores[keep], genuine[keep]
    return scores.flatten(), genuine.flatten()


def roc(scores: Any, genuine: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC of a verification test: (FAR, TAR, thresholds), FAR increasing (sklearn's roc_curve;
    accept a pair when its score >= threshold). Every operating point is kept: sklearn's
    `drop_intermediate` would drop points inside straight diagonal runs, which can lower TAR at
    a FAR that falls inside such a run."""
    from sklearn.metrics import roc_curve

    s = torch.as_tensor(scores).detach().cpu().double().numpy().ravel()
    g = torch.as_tensor(genuine).detach().cpu().numpy().ravel().astype(bool)
    if s.shape != g.shape:
        raise ValueError(f"{s.shape[0]} scores but {g.shape[0]} genuine flags")
    if g.all() or not g.any():
        raise ValueError("a ROC needs both genuine and impostor pairs")
    far, tar, thresholds = roc_curve(g, s, drop_intermediate=False)
    return far, tar, thresholds


def tar_at_far(far: np.ndarray, tar: np.ndarray, target_far: float) -> float:
    """The highest TAR among operating points whose FAR <= target_far."""
    if not 0 <= target_far <= 1:
        raise ValueError(f"target_far must be in [0, 1], got {target_far}")
    ok = np.asarray(far) <= target_far
    return float(np.asarray(tar)[ok].max()) if ok.any() else 0.0


def equal_error_rate(far: np.ndarray, tar: np.ndarray) -> float:
    """EER: the rate where FAR equals the false-reject rate 1 - TAR, interpolated linearly
    between the two ROC points that bracket the crossing."""
    far, frr = np.asarray(far, dtype=float), 1.0 - np.asarray(tar, dtype=float)
    diff = frr - far  # non-increasing along the ROC
    i = int(np.argmax(diff <= 0))
    if i == 0:
        return float(far[0] if diff[0] == 0 else (far[0] + frr[0]) / 2)
    d0, d1 = diff[i - 1], diff[i]
    w = d0 / (d0 - d1)
    return float(far[i - 1] + w * (far[i] - far[i - 1]))


def verification_metrics(scores: Any, genuine: Any,
                         fars: Sequence[float] = (1e-2, 1e-3)) -> dict[str, float]:
    """AUC, EER and TAR at each FAR in `fars` (keys "auc", "eer", "tar@far=0.01", ...)."""
    far, tar, _ = roc(scores, genuine)
    return roc_metrics(far, tar, fars)


def roc_metrics(far: np.ndarray, tar: np.ndarray,
                fars: Sequence[float] = (1e-2, 1e-3)) -> dict[str, float]:
    """`verification_metrics` from an ROC already computed by `roc`."""
    from sklearn.metrics import auc

    out = {"auc": float(auc(far, tar)), "eer": equal_error_rate(far, tar)}
    for f in fars:
        out[f"tar@far={f:g}"] = tar_at_far(far, tar, f)
    return out


def roc_on_grid(far: np.ndarray, tar: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """TAR at each FAR of `grid` (the best TAR with FAR <= grid value): a compact ROC to store."""
    far, tar = np.asarray(far), np.asarray(tar)
    best = np.maximum.accumulate(tar)  # FAR is non-decreasing along the ROC
    pos = np.searchsorted(far, np.asarray(grid), side="right") - 1
    return np.where(pos >= 0, best[np.clip(pos, 0, None)], 0.0)


def recall_at_1(probes: Any, probe_labels: Any, gallery: Any, gallery_labels: Any, *,
                exclude_diagonal: bool = False) -> float:
    """Share of probes whose cosine nearest gallery item has the probe's class (rank-1 retrieval).

    `exclude_diagonal` (P = G, same images) forbids matching probe i to gallery item i."""
    p, g = as_matrix(probes, "probes"), as_matrix(gallery, "gallery")
    if p.shape[1] != g.shape[1]:
        raise ValueError(f"probes are {p.shape[1]}-d but the gallery is {g.shape[1]}-d")
    lp = _labels(probe_labels, p.shape[0], "probe_labels").to(g.device)
    lg = _labels(gallery_labels, g.shape[0], "gallery_labels").to(g.device)
    dtype = torch.promote_types(p.dtype, g.dtype)
    sims = F.normalize(p.to(dtype), dim=1) @ F.normalize(g.to(dtype), dim=1).T
    if exclude_diagonal:
        if p.shape[0] != g.shape[0]:
            raise ValueError("exclude_diagonal needs as many probes as gallery items (same images)")
        sims.fill_diagonal_(-torch.inf)
    return float((lg[sims.argmax(1)] == lp).double().mean())


def score_protocol(probes: torch.Tensor, gallery: torch.Tensor, labels: torch.Tensor,
                   fars: Sequence[float] = (1e-2, 1e-3)
                   ) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """One open-set protocol: probes (N, d) against gallery (N, d), both of the same N images
    with `labels` (N,); every pair of distinct images is a trial. Returns the
    `verification_metrics` plus "recall@1", and the ROC (far, tar) they come from."""
    scores, genuine = pair_scores(probes, gallery, labels, labels, exclude_diagonal=True)
    far, tar, _ = roc(scores, genuine)
    metrics = roc_metrics(far, tar, fars)
    metrics["recall@1"] = recall_at_1(probes, labels, gallery, labels, exclude_diagonal=True)
    return metrics, far, tar


def open_set_report(src: Any, dst: Any, labels: Any, emb_map: Callable[[torch.Tensor], torch.Tensor],
                    fars: Sequence[float] = (1e-2, 1e-3)) -> dict[str, dict[str, float]]:
    """Verification and rank-1 retrieval on unseen classes, native vs mapped.

    src (N, d_A) and dst (N, d_B) embed the same N test images of classes never seen in training
    (nor by the map's fit); labels (N,). Three protocols (`score_protocol`): "native_src"
    (A vs A), "native_dst" (B vs B) and "mapped" (probes M f_A(x), gallery f_B(y)).
    """
    src, dst = _paired(src, dst)
    labels = _labels(labels, src.shape[0], "labels")
    mapped = emb_map(src)
    return {name: score_protocol(probes, gallery, labels, fars)[0]
            for name, probes, gallery in (("native_src", src, src), ("native_dst", dst, dst),
                                          ("mapped", mapped, dst))}


# ----------------------------------------------------------------------------- the zoo's networks

ZOO_ARCHS = ("mlp", "lenet5", "mobilenet", "vgg", "resnet20")


def build_zoo_network(arch: str, in_channels: int = 1, num_classes: int = 10, feat_dim: int = 32,
                      *, image_size: int = 28, head: str | None = "linear",
                      **arch_options: Any) -> Network:
    """A zoo `Network`: backbone -> embedding (feat_dim) -> Linear(feat_dim, C) *with* a bias
    (the closed-form map carries biases), or no head (`head=None`, open-set training).

    arch: "mlp", "lenet5", "mobilenet", "vgg" or "resnet20" (`core.models.build_backbone`).
    """
    if arch not in ZOO_ARCHS:
        raise ValueError(f"unknown zoo architecture {arch!r}; known: {', '.join(ZOO_ARCHS)}")
    if head not in ("linear", None):
        raise ValueError(f"head must be 'linear' or None, got {head!r}")
    head_module = nn.Linear(feat_dim, num_classes, bias=True) if head == "linear" else None
    if arch in ("vgg", "resnet20"):
        return build_network(arch, in_channels, num_classes, feat_dim, image_size=image_size,
                             head=head_module, **arch_options)
    backbone = build_backbone(arch, in_channels, image_size, **arch_options)
    channels, height, width = map_shape(backbone, in_channels, image_size)
    if arch == "lenet5":
        neck: nn.Module = FlattenLinear(channels * height * width, feat_dim)
    else:
        neck = PooledLinear(channels, feat_dim)
    return Network(backbone, neck, head_module)


class CosFaceObjective(nn.Module):
    """The open-set members' loss: CosFace on the embedding (pytorch-metric-learning, margin
    0.2, scale 16); its class weights are trained too."""

    def __init__(self, num_classes: int, dim: int, margin: float = 0.2, scale: float = 16.0) -> None:
        super().__init__()
        from pytorch_metric_learning.losses import CosFaceLoss

        self.loss = CosFaceLoss(num_classes, dim, margin=margin, scale=scale)

    def forward(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.from_embedding(model.forward_all(images).embedding, labels)

    def from_embedding(self, embedding: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of a batch's embeddings (B, d) with labels (B,)."""
        return self.loss(embedding.float(), labels)
