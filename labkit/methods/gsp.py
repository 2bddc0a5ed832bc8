"""Generalized Sum Pooling (GSP) for metric learning (Gürbüz, Şener, Alatan; ICCV 2023).

Global average pooling (GAP) treats every local feature of a conv map alike. GSP instead solves,
per image, an entropy-smoothed *partial* optimal-transport problem between the n = h*w local
features f_i (mass 1/n each) and K learnable prototypes ω_k, plus a residual bin ρ: only a
fraction μ of the total mass is transported, so the layer may switch off up to 1 - μ of the
features (background, nuisance). The pooled vector is the transported-mass weighted average of
the features; at μ = 1 every feature is fully transported and GSP is exactly GAP.

Reconstruction notice: only the paper's abstract was available. Everything here reconstructs the
maths from the authors' code; the paper's notation and numbers are UNVERIFIED. The method page
docs/methods/gsp.md states the maths with these names, the defaults, how this code was compared
with the authors' and every deviation from it.

Problem per image, costs c (K, n), ε = 1/γ::

    min_{π>=0, ρ>=0}  Σ c_ki π_ki + ε Σ π_ki (log π_ki - 1) + ε Σ ρ_i (log ρ_i - 1)
    s.t.  ρ_i + Σ_k π_ki = 1/n  (each feature)      Σ_ki π_ki = μ  (transport ratio)

KKT gives π_ki = β exp(-γ c_ki) ρ_i, ρ_i = (1/n) / (1 + β s_i), s_i = Σ_k exp(-γ c_ki), with one
scalar β per image fixing the total mass. With u = log β and ℓ_i = log s_i this reads

    t_i = Σ_k π_ki = σ(u + ℓ_i) / n,   π_ki = t_i softmax_k(-γ c_·i),   ρ_i = σ(-u - ℓ_i) / n,

which is finite for any γ (no kernel underflow). The authors iterate the fixed point
β ← μ / Σ_i ρ_i s_i (in these variables u ← u + log(μ n) - log Σ_i σ(u + ℓ_i)) for 100 steps; its
contraction factor at the solution is Σ_i a_i² / (μ n) with a_i = n t_i, near 1 as μ -> 1 (396
steps to converge at μ = 0.99). We solve the same scalar equation by a safeguarded Newton
method (see ``_solve_log_beta``), which stops at convergence after 1-14 steps for any μ in
(0, 1) and γ up to 50, and reaches the same β.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from labkit.core.evaluate import mask_cover, mass_inside
from labkit.core.models import Network, eval_mode

__all__ = [
    "GSP",
    "GSPOutput",
    "ZeroShotPredictionLoss",
    "GSPMetricLoss",
    "gsp_transport",
    "default_tol",
    "transport_vjp",
    "transport_weights",
    "unit_ball",
    "prototype_costs",
    "k_center",
    "zero_shot_prediction_loss",
]

Backward = Literal["implicit", "unrolled"]
_LOG2E = 1.0 / math.log(2.0)  # exp(x) = exp2(x log2 e)


# --------------------------------------------------------------------------- argument checks
def _check_mu_gamma(mu: float, gamma: float) -> tuple[float, float]:
    mu, gamma = float(mu), float(gamma)
    if not (0.0 < mu <= 1.0) or math.isnan(mu):
        raise ValueError(f"mu (the transport ratio) must lie in (0, 1], got {mu}")
    if not gamma > 0.0 or math.isinf(gamma):
        raise ValueError(f"gamma (the inverse entropy temperature 1/eps) must be a finite "
                         f"number > 0, got {gamma}")
    return mu, gamma


def _check_costs(costs: torch.Tensor) -> None:
    if not isinstance(costs, torch.Tensor):
        raise ValueError(f"costs must be a torch.Tensor of shape (B, K, n), got {type(costs)}")
    if costs.dim() != 3:
        raise ValueError(f"costs must have shape (B, K, n) = (batch, prototypes, features), "
                         f"got a tensor of rank {costs.dim()} with shape {tuple(costs.shape)}")
    if min(costs.shape) == 0:
        raise ValueError(f"costs must be non-empty, got shape {tuple(costs.shape)}")
    if not costs.is_floating_point():
        raise ValueError(f"costs must be a floating-point tensor, got {costs.dtype}")


def default_tol(dtype: torch.dtype) -> float:
    """The solver's default tolerance on the relative error of the transported mass."""
    # The step is log(transported mass / μ); its float floor is ~sqrt(n) eps, so ask for a bit
    # more than that (float32: 7.6e-6, float64: 1.4e-14).
    return 64.0 * torch.finfo(dtype).eps


_HALF = (torch.float16, torch.bfloat16)


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype GSP computes in: the inputs' promoted dtype, but float32 for 16-bit floats.

    In bfloat16 the mass sum of 49 sigmoids is off by percents and the solver's tolerance
    (64 eps = 0.5) stops the first step wherever it lands (μ = 0.3 came out as 0.49); in float16
    a μ = 0.9 solve stalled; bfloat16 has no linear solve (the ZSR ridge). Callers cast the
    outputs back, as autocast does for softmax.
    """
    dtype = functools.reduce(torch.promote_types, dtypes)
    return torch.float32 if dtype in _HALF else dtype


def _solve_input(costs: torch.Tensor, tol: float | None) -> tuple[torch.Tensor, float]:
    """``costs`` in the dtype the solver runs in (``_compute_dtype``), and the tolerance
    (``default_tol`` if None)."""
    costs = costs.to(_compute_dtype(costs.dtype))
    return costs, default_tol(costs.dtype) if tol is None else float(tol)


# --------------------------------------------------------------------------- the solver
class _Solution(NamedTuple):
    x: torch.Tensor  # (B, n) u + ℓ_i, u = log β at the solution
    sig: torch.Tensor  # (B, n) σ(x) = n t_i
    iterations: int


def _solve_log_beta(log_s: torch.Tensor, mu: float, iters: int, tol: float) -> _Solution:
    """Solve Σ_i σ(u + ℓ_i) = μ n for u = log β, vectorised over the batch.

    log_s: (B, n) = ℓ_i. Returns x = u + ℓ, σ(x) and the number of iterations run. Newton's
    method on F(β) = Σ_i β s_i / (1 + β s_i) - μ n, which is concave and increasing in β: its
    tangent lies above it, so every Newton step lands at or left of the root, and from the left
    the steps climb to it monotonically and quadratically. In u, with σ_i = σ(u + ℓ_i),
    M = Σ σ_i and D = Σ σ_i σ(-u - ℓ_i) = β F'(β), the step is u ← u + log(1 + (μn - M) / D).
    D is summed from σ(-x), not as M - Σ σ², which cancels to rounding noise once features
    saturate (features split into two groups far apart in ℓ, at γ = 50, then took hundreds of
    steps); the factor is kept >= 2^-20 (eps in half precision) in case a step from the right
    would cross β = 0.
    The start is the second-order solution in the spread of ℓ, u₀ = logit μ - mean ℓ -
    (1 - 2μ) min(var ℓ, 1) / 2 (expand Σ σ(u + ℓ_i) around the mean; exact when all s_i are
    equal; var capped where the expansion stops meaning anything), after which one step
    usually suffices at GSP's settings. In our checks (μ <= 0.999, γ <= 50, uniform and
    two-group costs in [0, 2]) it converges in 1-14 steps, where the authors' fixed point
    β ← μ / Σ ρ_i s_i needs tens to hundreds as μ -> 1. The mass error |log M - log μn| <=
    ``tol`` is checked after every step (one host sync each). At GSP's sizes each tensor op
    costs more in dispatch than in arithmetic, so the loop is written for op count: in place
    where autograd (``backward="unrolled"``) allows.
    """
    n = log_s.shape[-1]
    target = mu * n
    # |log M - log μn| <= tol, as bounds on M: no log per check
    mass_lo, mass_hi = target * math.exp(-tol), target * math.exp(tol)
    info = torch.finfo(log_s.dtype)
    tiny = info.tiny
    # a step may shrink β by at most this factor (a step from the right may cross β = 0);
    # >= eps so that factor - 1 is representable (1 - 2^-20 rounds to 1 in half precision)
    min_step = max(2.0**-20, info.eps) - 1.0
    differentiable = torch.is_grad_enabled() and log_s.requires_grad  # backward="unrolled"
    # n var ℓ = Σ ℓ² - n mean², kept in [0, n] (var <= 1; rounding may leave it < 0). From
    # sums: var_mean's kernel took 33 us at (64, 49) on the 2-core VM, these 20 us.
    mean = log_s.mean(dim=-1, keepdim=True)
    spread = torch.linalg.vecdot(log_s, log_s).unsqueeze_(-1).addcmul_(mean, mean, value=-n)
    u = torch.add(mean, spread.clamp_(0.0, n), alpha=(0.5 - mu) / n).neg_().add_(
        math.log(mu / (1.0 - mu)))
    for it in range(iters):
        x = torch.add(log_s, u)
        sig = torch.sigmoid(x)
        mass = sig.sum(dim=-1, keepdim=True)
        if tol > 0 and it > 0:
            lo, hi = torch.stack(torch.aminmax(mass.detach())).tolist()  # one host sync
            if mass_lo <= lo and hi <= mass_hi:
                return _Solution(x, sig, it)
        slope = torch.linalg.vecdot(sig, torch.sigmoid(x.neg())).unsqueeze_(-1).clamp_min_(tiny)
        excess = torch.rsub(mass, target)  # μn - M; the step is excess / D, floored
        if differentiable:
            # Autograd through a floored step would multiply its zero gradient by excess / D²,
            # which is inf once D ~ 1e-20 (NaN in the unrolled gradient): take the floor
            # branch without dividing by D.
            floored = excess.detach() < slope.detach() * min_step
            step = torch.where(floored, min_step, excess / torch.where(floored, 1.0, slope))
        else:
            step = excess.div_(slope).clamp_min_(min_step)
        u.add_(step.log1p_())
    x = torch.add(log_s, u)
    sig = torch.sigmoid(x)
    error = sig.detach().sum(dim=-1).log_().sub_(math.log(target)).abs_().max()
    # one sync, only when the cap was hit; warn when the mass is off by more than 1e-6
    if tol > 0 and float(error) > max(tol, 1e-6):
        warnings.warn(f"GSP transport: the solver did not converge in {iters} iterations "
                      f"(mu = {mu}): the transported mass is off by {float(error):.1e} "
                      f"(relative); raise iters", RuntimeWarning, stacklevel=4)
    return _Solution(x, sig, iters)


def _kernel(costs: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """E = exp(-γ (c - m)) with a shift m, s_i = Σ_k E_ki > 0, ℓ_i = log s_i - γ m_i.

    Every exp(-γ c) is evaluated once and kept for the plan, as exp2 of γ log2(e) c: on CPU
    torch's exp2 is ~1.7x faster than its exp at the same ~1 ulp, and the scaled argument is
    rounded once either way. Unshifted (m = 0) first: when every s_i lies in
    [sqrt(tiny), max] of the dtype (GSP's costs in [0, 2] for γ up to ~21 in float32), an
    entry of E that underflows weighs under K sqrt(tiny) of its column, so nothing is lost.
    Else the shift m_i = min_k c_ki (a hand-made logsumexp that keeps E) makes s_i >= 1
    whatever γ, at one more pass over the costs. One host sync either way.
    """
    e = torch.mul(costs, -gamma * _LOG2E).exp2_()
    s = e.sum(dim=1)
    lo, hi = torch.stack(torch.aminmax(s.detach())).tolist()
    info = torch.finfo(costs.dtype)
    if math.sqrt(info.tiny) <= lo and hi <= info.max:
        return e, s, s.log()
    shift = costs.detach().amin(dim=1, keepdim=True).mul_(gamma * _LOG2E)  # log2 units
    e = torch.rsub(costs, shift, alpha=gamma * _LOG2E).exp2_()
    s = e.sum(dim=1)
    return e, s, s.log().sub_(shift.squeeze(1), alpha=math.log(2.0))


def _transport(costs: torch.Tensor, mu: float, gamma: float, iters: int, tol: float,
               inplace: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward solve: returns (rho, pi, t, ℓ) with t_i = Σ_k π_ki and ℓ_i = log Σ_k e^(-γ c_ki)."""
    n = costs.shape[-1]
    e, s, log_s = _kernel(costs, gamma)
    if mu == 1.0:  # every feature fully transported, ρ = 0 exactly: no iterations
        rho = torch.zeros_like(log_s)
        t = torch.full_like(log_s, 1.0 / n)
    else:
        x, sig, _ = _solve_log_beta(log_s, mu, iters, tol)
        t = sig.div(n)  # not div_: sigmoid's backward keeps its output
        rho = torch.sigmoid(x.neg_()).div(n)  # σ(-x), not 1/n - t: no cancellation for kept ones
    coef = t.div(s).unsqueeze_(1)  # π_ki = t_i E_ki / s_i = t_i softmax_k(-γ c_·i)
    pi = e.mul_(coef) if inplace else e * coef
    return rho, pi, t, log_s


def transport_vjp(rho: torch.Tensor, pi: torch.Tensor, grad_rho: torch.Tensor,
                  grad_pi: torch.Tensor, gamma: float, t: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Closed-form implicit gradient of the transport w.r.t. the costs.

    rho (B, n), pi (B, K, n) at the optimum (t = Σ_k π optional, recomputed if not given);
    grad_rho = ∂L/∂ρ, grad_pi = ∂L/∂π. Returns ∂L/∂c (B, K, n). Derived from the KKT system
    (spec §2; re-derived here, the paper's form is UNVERIFIED): with
    h_i = ρ_i G0_i + Σ_k π_ki G_ki and D = n Σ_i ρ_i t_i (= 1 - μ - n Σ ρ_i², the Schur
    complement of the bordered constraint system),

        τ = (n Σ_i ρ_i h_i - Σ_i ρ_i G0_i) / D,   ∂L/∂c_ki = -γ π_ki (G_ki - n h_i - n τ ρ_i).

    No matrix inverse and no stored iterations. D = 0 only when ρ_i t_i = 0 for every i (μ = 1,
    or a hard 0/1 selection); then ρ-weighted terms vanish with it and τ is set to 0.
    """
    n = rho.shape[-1]
    if t is None:
        t = pi.sum(dim=1)  # not 1/n - ρ: that cancels badly for features that are switched off
    rg = rho * grad_rho
    weighted = pi * grad_pi  # (B, K, n), reused for the result
    h = weighted.sum(dim=1).add_(rg)
    # τ = (Σ ρ h - Σ ρ G0 / n) / Σ ρ t: the factors n of numerator and D cancel
    denom = torch.linalg.vecdot(rho, t).unsqueeze_(-1)
    numer = torch.linalg.vecdot(rho, h).unsqueeze_(-1).sub_(rg.sum(dim=-1, keepdim=True), alpha=1.0 / n)
    tau = numer.div_(denom).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)  # D = 0: τ = 0
    row = torch.addcmul(h, tau, rho).unsqueeze_(1)  # (B, 1, n): h_i + τ ρ_i
    # π ⊙ (γ n row - γ G), in place on the product already formed
    return weighted.mul_(-gamma).addcmul_(pi, row, value=gamma * n)


class _ImplicitTransport(torch.autograd.Function):
    @staticmethod
    def forward(ctx, costs, mu, gamma, iters, tol):
        rho, pi, t, log_s = _transport(costs, mu, gamma, iters, tol, inplace=True)
        ctx.gamma = gamma
        # Keep only (B, n) vectors besides the costs (which their producer holds anyway, e.g.
        # the sqrt of the layer's distances): the (B, K, n) plan is rebuilt in backward as
        # π_ki = 2^(log2 t_i - ℓ_i log2 e - γ log2(e) c_ki), two passes, no stored copy of π.
        ctx.save_for_backward(costs, rho, t, t.log2().sub_(log_s, alpha=_LOG2E))
        return rho, pi

    @staticmethod
    def backward(ctx, grad_rho, grad_pi):
        costs, rho, t, log2_coef = ctx.saved_tensors
        pi = torch.add(log2_coef.unsqueeze(1), costs, alpha=-ctx.gamma * _LOG2E).exp2_()
        grad = transport_vjp(rho, pi, grad_rho, grad_pi, ctx.gamma, t)
        return grad, None, None, None, None


def gsp_transport(costs: torch.Tensor, mu: float, gamma: float, iters: int = 100,
                  backward: Backward = "implicit", tol: float | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve GSP's entropic partial transport for a batch of cost matrices.

    costs: (B, K, n) = c_ki, prototype k to local feature i (any real values; GSP's are in
    [0, 2]). mu: transport ratio μ in (0, 1]. gamma: inverse temperature γ = 1/ε > 0.
    iters: maximum fixed-point steps (the authors always run 100); the loop stops once the
    relative error of the transported mass is below ``tol`` (default: 64 machine eps of the
    solve dtype; 0 runs all ``iters``). backward: "implicit" (closed form, see
    ``transport_vjp``) or "unrolled" (autograd through the iterations actually run; for checks
    and benchmarks).

    Returns (rho, pi): the residual ρ (B, n) and plan π (B, K, n), in the dtype of ``costs``
    (16-bit costs are solved in float32 and the results rounded back). Each feature's mass
    ρ_i + Σ_k π_ki = 1/n holds to rounding; Σ π = μ holds at convergence. μ = 1 is solved in
    closed form (ρ = 0, π_ki = softmax_k(-γ c_·i)_k / n), not iterated.
    """
    _check_costs(costs)
    mu, gamma = _check_mu_gamma(mu, gamma)
    if int(iters) < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if backward not in ("implicit", "unrolled"):
        raise ValueError(f"backward must be 'implicit' or 'unrolled', got {backward!r}")
    work, tol = _solve_input(costs, tol)
    if backward == "implicit":
        rho, pi = _ImplicitTransport.apply(work, mu, gamma, int(iters), tol)
    else:
        rho, pi, _, _ = _transport(work, mu, gamma, int(iters), tol, inplace=False)
    return rho.to(costs.dtype), pi.to(costs.dtype)


def transport_weights(rho: torch.Tensor, mu: float) -> torch.Tensor:
    """Per-feature pooling weights w_i = (1 - n ρ_i) / μ (B, n): 0 <= w_i <= 1/μ, mean 1."""
    n = rho.shape[-1]
    return (1.0 - n * rho) / mu


def transport_iterations(costs: torch.Tensor, mu: float, gamma: float, iters: int = 1000,
                         tol: float | None = None) -> int:
    """How many fixed-point steps the solver takes on ``costs`` (a diagnostic for the bench)."""
    _check_costs(costs)
    mu, gamma = _check_mu_gamma(mu, gamma)
    if mu == 1.0:
        return 0
    work, tol = _solve_input(costs.detach(), tol)
    with torch.no_grad():
        return _solve_log_beta(_kernel(work, gamma)[2], mu, iters, tol).iterations


# --------------------------------------------------------------------------- geometry helpers
def unit_ball(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Project onto the unit ball: x / max(1, ‖x‖) along ``dim`` ("Lipschitz L2 normalisation").

    The authors' TF op has a hand-written gradient we could not read; here autograd
    differentiates this expression (UNVERIFIED whether the two gradients agree).
    """
    return x / x.norm(dim=dim, keepdim=True).clamp_min(1.0)


def prototype_costs(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Non-squared Euclidean costs c_ki = ‖ω̂_k - f̂_i‖ after unit-ball projection.

    features: (B, n, d) local features f_i; prototypes: (K, d) ω_k. Returns (B, K, n) in [0, 2].
    """
    if features.dim() != 3 or prototypes.dim() != 2 or features.shape[-1] != prototypes.shape[-1]:
        raise ValueError(f"need features (B, n, d) and prototypes (K, d) with the same d, got "
                         f"{tuple(features.shape)} and {tuple(prototypes.shape)}")
    return _costs(features, prototypes)


def _costs(f: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``prototype_costs`` without the checks: f (B, n, d) -> (B, K, n), a transposed view.

    f̂_i = f_i s_i with s_i = 1 / max(1, ‖f_i‖) is never formed: ω̂·f̂_i = s_i (ω̂·f_i), so only
    (B, n, K) and (B, n) tensors are touched besides one (B n, d) x (d, K) matmul. The (B, n, ·)
    layout keeps every reduction over d contiguous (no strided norms, no copies for matmul).
    """
    sq_norm = f.square().sum(-1)  # (B, n)
    # 1 / max(1, ‖f‖), clamped before the root: a feature at exactly 0 (a map cell that is 0
    # after ReLU in every channel) would otherwise give sqrt'(0) = inf times clamp's 0 = NaN
    scale = sq_norm.clamp_min(1.0).rsqrt()
    w = unit_ball(prototypes)
    dots = torch.matmul(f, w.T)  # (B, n, K)
    sq = (w.square().sum(-1) + (sq_norm * scale.square()).unsqueeze(-1)
          - 2.0 * dots * scale.unsqueeze(-1))
    # Clamp keeps sqrt's gradient finite when a feature sits on a prototype (cost ~1e-6 there).
    eps = 1e-12 if sq.dtype == torch.float64 else 1e-10
    return sq.clamp_min(eps).sqrt().transpose(1, 2)


def k_center(points: torch.Tensor, k: int, first: int = 0) -> torch.Tensor:
    """Greedy k-centre (farthest-point) selection: indices (k,) into points (N, d).

    Starts at ``first`` and repeatedly adds the point farthest from the chosen set; a
    2-approximation of the k-centre problem. Ties go to the lowest index.
    """
    if points.dim() != 2:
        raise ValueError(f"points must be (N, d), got shape {tuple(points.shape)}")
    num = points.shape[0]
    if not 1 <= k <= num:
        raise ValueError(f"k must be in [1, N={num}], got {k}")
    if not 0 <= first < num:
        raise ValueError(f"first must index a point in [0, {num}), got {first}")
    chosen = torch.empty(k, dtype=torch.long, device=points.device)
    chosen[0] = first
    dist = (points - points[first]).norm(dim=1)
    for j in range(1, k):
        nxt = torch.argmax(dist)
        chosen[j] = nxt
        dist = torch.minimum(dist, (points - points[nxt]).norm(dim=1))
    return chosen


# --------------------------------------------------------------------------- the layer
class GSPOutput(NamedTuple):
    """Everything the layer computes for one batch (``GSP.forward(..., return_maps=True)``).

    pooled (B, d): x = Σ_i (t_i / μ) f_i.  weights (B, h, w): w_i = n t_i / μ (mean 1).
    prototype_maps (B, K, h, w): n π_ki, feature i's share sent to prototype k.
    histogram (B, K): z_k = Σ_i π_ki / μ (sums to 1), the input of the zero-shot loss.
    """

    pooled: torch.Tensor
    weights: torch.Tensor
    prototype_maps: torch.Tensor
    histogram: torch.Tensor


class GSP(nn.Module):
    """Generalized sum pooling neck: (B, C, H, W) conv map -> (B, dim) embedding.

    1x1 projection (no bias, as in the TF code) to ``dim``, unit-ball projection, non-squared
    L2 costs to ``num_prototypes`` learnable prototypes, transport with ratio μ = ``mu`` and
    inverse temperature γ = ``gamma``, then the transported-mass weighted average of the
    projected features. The output is not normalised (the metric loss does that).

    Prototypes are set by greedy k-centre over the unit-ball projected local features of the
    first batch the layer sees with at least K of them (or call ``init_prototypes``). The
    authors' TF code used a memory of 1024 GAP embeddings after a warm-up and their PyTorch code
    the classifier rows; this first-batch choice is ours.
    """

    def __init__(self, in_channels: int, dim: int, num_prototypes: int = 64, mu: float = 0.3,
                 gamma: float = 5.0, iters: int = 100, backward: Backward = "implicit") -> None:
        super().__init__()
        if in_channels < 1 or dim < 1 or num_prototypes < 1:
            raise ValueError(f"in_channels, dim and num_prototypes must be >= 1, got "
                             f"{in_channels}, {dim}, {num_prototypes}")
        self.mu, self.gamma = _check_mu_gamma(mu, gamma)
        if backward not in ("implicit", "unrolled"):
            raise ValueError(f"backward must be 'implicit' or 'unrolled', got {backward!r}")
        self.iters, self.backward = int(iters), backward
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=1, bias=False)
        nn.init.xavier_uniform_(self.proj.weight)  # glorot, as the TF layer
        self.prototypes = nn.Parameter(torch.empty(num_prototypes, dim))
        nn.init.xavier_uniform_(self.prototypes)  # fallback until k-centre runs
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._ready = self._warned_few_points = False

    @property
    def num_prototypes(self) -> int:
        return self.prototypes.shape[0]

    @torch.no_grad()
    def init_prototypes(self, points: torch.Tensor) -> torch.Tensor:
        """Set the prototypes to k-centres of points (N, dim) in embedding space (unit ball)."""
        pts = unit_ball(points.detach().reshape(-1, points.shape[-1]).to(self.prototypes))
        if pts.shape[0] < self.num_prototypes:
            raise ValueError(f"need at least K={self.num_prototypes} points to initialise the "
                             f"prototypes, got {pts.shape[0]}")
        idx = k_center(pts, self.num_prototypes)
        self.prototypes.copy_(pts[idx])
        self.initialized.fill_(True)
        self._ready = True
        return idx

    def local_features(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Projected local features f_i: (B, C, H, W) -> (B, n, dim)."""
        if feature_map.dim() != 4:
            raise ValueError(f"GSP expects a conv map (B, C, H, W), got shape "
                             f"{tuple(feature_map.shape)}")
        # x^T W^T on a transposed view of the map: one (B n, C) x (C, dim) matmul, the same
        # numbers as the 1x1 conv `proj` (whose weight it uses) at about half its CPU cost
        weight = self.proj.weight.view(self.proj.out_channels, -1)
        return torch.matmul(feature_map.flatten(2).transpose(1, 2), weight.T.to(feature_map.dtype))

    def forward(self, feature_map: torch.Tensor, return_maps: bool = False
                ) -> torch.Tensor | GSPOutput:
        dev = feature_map.device.type
        if feature_map.dtype in _HALF or torch.is_autocast_enabled(dev):
            # The fixed point and the closed-form backward need float32 accuracy: no autocast.
            with torch.autocast(device_type=dev, enabled=False):
                out = self._forward(feature_map.float(), return_maps)
            if feature_map.dtype == torch.float32:  # float32 under autocast stays float32
                return out
            if isinstance(out, GSPOutput):  # a half input gets half outputs
                return GSPOutput(*(x.to(feature_map.dtype) for x in out))
            return out.to(feature_map.dtype)
        return self._forward(feature_map, return_maps)

    def _forward(self, feature_map: torch.Tensor, return_maps: bool) -> torch.Tensor | GSPOutput:
        f = self.local_features(feature_map)  # (B, n, d)
        if not self._ready:  # checks the buffer once, not on every step (a GPU sync)
            if bool(self.initialized):
                self._ready = True
            elif f.shape[0] * f.shape[1] >= self.num_prototypes:
                self.init_prototypes(f)
            elif not self._warned_few_points:
                # e.g. one 7x7 map with K = 64: keep the fallback init, retry with the next batch
                warnings.warn(f"GSP: {f.shape[0] * f.shape[1]} local features cannot seed "
                              f"K={self.num_prototypes} prototypes; they keep their random init "
                              f"until a batch with enough features", RuntimeWarning, stacklevel=3)
                self._warned_few_points = True
        if self.mu == 1.0 and not return_maps:
            return f.mean(dim=1)  # the exact special case: GAP, whatever the prototypes
        costs = _costs(f, self.prototypes.to(f.dtype))
        rho, pi = gsp_transport(costs, self.mu, self.gamma, self.iters, self.backward)
        n = f.shape[1]
        if self.mu == 1.0:
            coef = torch.full_like(rho, 1.0 / n)
            pooled = f.mean(dim=1)
        else:
            coef = pi.sum(dim=1) / self.mu  # t_i / μ: convex weights, each <= 1/(n μ)
            pooled = torch.bmm(coef.unsqueeze(1), f).squeeze(1)
        if not return_maps:
            return pooled
        b, _, h, w = feature_map.shape
        return GSPOutput(pooled=pooled, weights=(n * coef).reshape(b, h, w),
                         prototype_maps=(n * pi).reshape(b, -1, h, w),
                         histogram=pi.sum(dim=2) / self.mu)

    def extra_repr(self) -> str:
        return (f"K={self.num_prototypes}, mu={self.mu}, gamma={self.gamma}, "
                f"iters={self.iters}, backward={self.backward!r}")


def prime_prototypes(model: Network, images: torch.Tensor) -> None:
    """Set `model.neck`'s (a `GSP`) prototypes to k-centres of the local features of images
    (B, C, H, W), moved to the model's device: done once, before training starts."""
    device = next(model.parameters()).device
    with torch.no_grad():
        model.neck.init_prototypes(model.neck.local_features(model.backbone(images.to(device))))


# --------------------------------------------------------------------------- zero-shot loss
def zero_shot_prediction_loss(histograms: torch.Tensor, labels: torch.Tensor,
                              class_embeddings: torch.Tensor, lam: float = 0.05,
                              scale: float = 9.5, split: Literal["halves", "interleave"] = "halves"
                              ) -> torch.Tensor:
    """Zero-shot prediction (ZSR) loss on prototype histograms (spec §4).

    histograms: (B, K) attribute vectors z; labels: (B,) in [0, C); class_embeddings (C, e): Y.
    The batch is split into A and B ("halves": first/second half, disjoint classes under a
    class-blocked sampler, as the authors' PyTorch code; "interleave": even/odd, as their TF
    code; the paper's choice is UNVERIFIED). A ridge map fitted on A, W_A = Z_Aᵀ(Z_A Z_Aᵀ + λI)⁻¹
    Y_{y_A}, predicts Ŷ_B = Z_B W_A, and vice versa; each prediction is scored by a softmax over
    all classes of scale·⟨ŷ, Y_c⟩ (margin 0). Returns the mean of the two halves' mean
    cross-entropies (a scalar; for an odd batch this weighs the smaller half's samples a little
    more than a mean over all samples would). Computed with autocast off and 16-bit inputs
    in float32: bfloat16 has no linear solve, and CUDA autocast does not upcast it.
    """
    if histograms.dim() != 2 or labels.dim() != 1 or histograms.shape[0] != labels.shape[0]:
        raise ValueError(f"need histograms (B, K) and labels (B,), got {tuple(histograms.shape)} "
                         f"and {tuple(labels.shape)}")
    if histograms.shape[0] < 2:
        raise ValueError("the zero-shot loss needs a batch of at least 2 samples")
    if class_embeddings.dim() != 2:
        raise ValueError(f"class_embeddings must be (C, e), got {tuple(class_embeddings.shape)}")
    if labels.min() < 0 or labels.max() >= class_embeddings.shape[0]:
        raise ValueError(f"labels must lie in [0, {class_embeddings.shape[0]}) (one class "
                         f"embedding per training class)")
    if lam <= 0:
        raise ValueError(f"lam (ridge weight) must be > 0, got {lam}")
    num = histograms.shape[0]
    if split == "halves":
        ia = torch.arange(num // 2, device=labels.device)
        ib = torch.arange(num // 2, num, device=labels.device)
    elif split == "interleave":
        ia = torch.arange(0, num, 2, device=labels.device)
        ib = torch.arange(1, num, 2, device=labels.device)
    else:
        raise ValueError(f"split must be 'halves' or 'interleave', got {split!r}")
    dtype = _compute_dtype(histograms.dtype, class_embeddings.dtype)
    z, classes = histograms.to(dtype), class_embeddings.to(dtype)
    y = classes[labels]

    def predict(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        za = z[src]
        gram = za @ za.T + lam * torch.eye(len(src), dtype=z.dtype, device=z.device)
        # Kernel form of the ridge solution: only a (b, b) solve, b = half the batch.
        return z[dst] @ (za.T @ torch.linalg.solve(gram, y[src]))

    with torch.autocast(device_type=z.device.type, enabled=False):
        logits_b = scale * predict(ia, ib) @ classes.T
        logits_a = scale * predict(ib, ia) @ classes.T
        return 0.5 * (F.cross_entropy(logits_b, labels[ib])
                      + F.cross_entropy(logits_a, labels[ia]))


class ZeroShotPredictionLoss(nn.Module):
    """Learnable class embeddings Y + ``zero_shot_prediction_loss``.

    Y starts He-normal over its embedding dimension e, std sqrt(2 / e); both author codes draw
    it over the class count C, std sqrt(2 / C) (0.14 against our 0.06 for C = 100, e = 512): a
    known deviation, kept because the stored runs were trained with it.
    """

    def __init__(self, num_classes: int, embed_dim: int, lam: float = 0.05, scale: float = 9.5,
                 split: Literal["halves", "interleave"] = "halves") -> None:
        super().__init__()
        if num_classes < 2 or embed_dim < 1:
            raise ValueError(f"need num_classes >= 2 and embed_dim >= 1, got {num_classes}, "
                             f"{embed_dim}")
        self.class_embeddings = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.kaiming_normal_(self.class_embeddings)
        self.lam, self.scale, self.split = lam, scale, split

    def forward(self, histograms: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return zero_shot_prediction_loss(histograms, labels, self.class_embeddings, self.lam,
                                         self.scale, self.split)


class GSPMetricLoss(nn.Module):
    """L = (1 - w) L_DML(x, y) + w L_ZSR(z, y) (w = 0.1, TF code); any PML-style loss works.

    ``dml`` is called as dml(embeddings, labels), e.g. a pytorch-metric-learning loss. With
    ``zsr=None`` (or no histograms given) this is the plain metric loss.
    """

    def __init__(self, dml: nn.Module, zsr: ZeroShotPredictionLoss | None = None,
                 weight: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= weight < 1.0:
            raise ValueError(f"weight must be in [0, 1), got {weight}")
        self.dml, self.zsr, self.weight = dml, zsr, weight

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                histograms: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.dml(embeddings, labels)
        if self.zsr is None or histograms is None:
            return loss
        return (1.0 - self.weight) * loss + self.weight * self.zsr(histograms, labels)


# ----------------------------------------------------------------------------- reading a trained layer

def weight_map(costs: torch.Tensor, mu: float, gamma: float, shape: tuple[int, int]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (h, w) and prototype maps n·π (K, h, w) for costs (K, n) of one image."""
    if costs.dim() != 2 or costs.shape[1] != shape[0] * shape[1]:
        raise ValueError(f"costs must be (K, n) with n = h*w = {shape[0] * shape[1]}, got "
                         f"{tuple(costs.shape)}")
    with torch.no_grad():
        rho, pi = gsp_transport(costs[None].double(), mu, gamma)
    n = costs.shape[1]
    return (transport_weights(rho, mu)[0].reshape(shape).float(),
            (n * pi[0]).reshape(-1, *shape).float())


def image_costs(backbone: nn.Module, neck: GSP, image: torch.Tensor
                ) -> tuple[torch.Tensor, tuple[int, int]]:
    """Costs (K, n) between one image's (C, H, W) local features and the prototypes, and (h, w)."""
    if not isinstance(neck, GSP):
        raise ValueError(f"neck must be a GSP layer, got {type(neck).__name__}")
    if image.dim() != 3:
        raise ValueError(f"image must be (C, H, W), got shape {tuple(image.shape)}")
    device = next(neck.parameters()).device
    with torch.no_grad(), eval_mode(backbone), eval_mode(neck):
        fmap = backbone(image[None].to(device)).float()
        costs = prototype_costs(neck.local_features(fmap), neck.prototypes.float())[0]
    return costs.cpu(), tuple(fmap.shape[2:])


def weight_grid(costs: torch.Tensor, shape: tuple[int, int], mus: Sequence[float],
                gammas: Sequence[float]) -> dict[tuple[float, float], torch.Tensor]:
    """Weights w_i (h, w) for every (μ, γ) pair of the grid, from costs (K, n) of one image."""
    if not mus or not gammas:
        raise ValueError("the grid needs at least one mu and one gamma")
    return {(float(m), float(g)): weight_map(costs, m, g, shape)[0] for m in mus for g in gammas}


def selective_gamma(costs: torch.Tensor, spread: float = 10.0) -> float:
    """The γ at which the costs (K, n) of one image differ by about `spread` nats (γ times
    their standard deviation), rounded to two significant digits: the transport's softmax over
    features then separates them, so μ visibly changes which ones are kept. At γ·std ≪ 1 every
    μ gives nearly uniform weights, i.e. GAP."""
    std = float(costs.double().std())
    if not std > 0:
        raise ValueError("the costs are all equal: no γ makes the transport selective")
    return float(f"{spread / std:.2g}")


@torch.no_grad()
def weight_maps(model: Network, images: torch.Tensor, mu: float | None = None,
                gamma: float | None = None) -> torch.Tensor:
    """GSP weights (N, h, w) of a trained network on images (N, C, H, W).

    ``mu``/``gamma`` re-solve the transport with other values than the layer was trained with.
    """
    if not isinstance(model.neck, GSP):
        raise ValueError("the model's neck is not a GSP layer")
    neck = model.neck
    device = next(model.parameters()).device
    model.eval()
    saved = neck.mu, neck.gamma
    try:
        neck.mu = saved[0] if mu is None else float(mu)
        neck.gamma = saved[1] if gamma is None else float(gamma)
        out = neck(model.backbone(images.to(device)), return_maps=True)
    finally:
        neck.mu, neck.gamma = saved
    return out.weights.cpu()


@torch.no_grad()
def foreground_weight_share(model: Network, images: torch.Tensor, threshold: float = 0.1,
                            mu: float | None = None, gamma: float | None = None
                            ) -> tuple[float, float]:
    """How GSP spends its weight: (mean weight on cells with ink, mean weight on empty cells).

    A conv-map cell counts as ink when the image patch it covers (average-pooled to the map's
    size) has mean intensity above ``threshold``; for MNIST the rest is black background.
    """
    w = weight_maps(model, images, mu, gamma)
    ink = F.adaptive_avg_pool2d(images.float().mean(1, keepdim=True), w.shape[1:])[:, 0]
    mask = ink > threshold
    if not mask.any() or mask.all():
        raise ValueError("the threshold leaves no ink or no background cells")
    return float(w[mask].mean()), float(w[~mask].mean())


@torch.no_grad()
def mass_on_object(model: Network, images: torch.Tensor, masks: torch.Tensor,
                   mu: float | None = None, gamma: float | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """GSP's weight on each image's object: (share of the pooling weight on the mask (N,), its
    chance level (N,), the mask's share of the map, which is what GAP's uniform weights give),
    for images (N, C, H, W) and masks (N, 1, H, W)."""
    weights = weight_maps(model, images, mu, gamma)
    cover = mask_cover(masks, weights.shape[1:])
    return mass_inside(weights, masks), cover.flatten(1).mean(1)


def toy_transport_example(mus: Sequence[float] = (1.0, 0.5, 0.25), gamma: float = 10.0,
                          seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A 2-D picture of the mechanism: 12 "object" features near 2 prototypes, 36 scattered
    "background" features. Returns features (48, 2), prototypes (2, 2), {mu: weights (48,)}."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.tensor([[0.45, 0.35], [-0.3, 0.5]], dtype=torch.float64)
    obj = protos.repeat(6, 1) + 0.07 * torch.randn(12, 2, generator=g, dtype=torch.float64)
    ang = 2 * math.pi * torch.rand(36, generator=g, dtype=torch.float64)
    rad = 0.55 + 0.4 * torch.rand(36, generator=g, dtype=torch.float64)
    back = torch.stack([rad * ang.cos(), rad * ang.sin()], 1)
    feats = torch.cat([obj, back])
    costs = prototype_costs(feats[None], protos)
    weights = {}
    for m in mus:
        rho, _ = gsp_transport(costs, m, gamma)
        weights[m] = transport_weights(rho, m)[0]
    return feats, protos, weights


def identity_checks(seed: int = 0) -> dict[str, bool]:
    """The exact facts the notebook states, checked on random data (float64)."""
    g = torch.Generator().manual_seed(seed)
    costs = 2 * torch.rand(4, 8, 49, generator=g, dtype=torch.float64)
    rho, pi = gsp_transport(costs, 0.3, 5.0, iters=1000)
    checks = {
        "each feature's mass is 1/n": bool(torch.allclose(rho + pi.sum(1),
                                                          torch.full_like(rho, 1 / 49))),
        "transported mass is mu": bool(torch.allclose(pi.sum((1, 2)),
                                                      torch.full((4,), 0.3, dtype=rho.dtype))),
    }
    torch.manual_seed(seed)
    layer = GSP(16, 8, num_prototypes=6, mu=1.0).double()
    fmap = torch.randn(3, 16, 7, 7, generator=g, dtype=torch.float64)
    checks["mu = 1 is exactly GAP"] = bool(torch.allclose(layer(fmap), layer.proj(fmap).mean((2, 3)),
                                                          rtol=0, atol=1e-14))
    rho0, _ = gsp_transport(costs, 0.3, 1e-8)
    checks["gamma -> 0 is GAP"] = bool(torch.allclose(transport_weights(rho0, 0.3),
                                                      torch.ones_like(rho0), atol=1e-6))
    grads = []
    for mode in ("implicit", "unrolled"):
        c = costs.clone().requires_grad_(True)
        r, p = gsp_transport(c, 0.3, 5.0, iters=1000, backward=mode)
        ((r * torch.arange(49.0, dtype=r.dtype)).sum() + p[:, 0].sum()).backward()
        grads.append(c.grad)
    checks["implicit gradient = unrolled gradient"] = bool(torch.allclose(*grads, atol=1e-10))
    return checks
