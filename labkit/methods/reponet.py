"""Regular Polytope Networks (Pernici, Bruni, Baecchi, Del Bimbo; "Fix Your Features" 2019,
"Maximally Compact and Separated Features with Regular Polytope Networks" CVPR-W 2019,
"Regular Polytope Networks" TNNLS 2021) and the baselines they are compared with.

The idea: the last layer of a classifier is a *fixed* matrix W (V, d) whose rows w_k are the
vertices of a regular polytope (d-Simplex, d-Cube, d-Orthoplex). Logits are z_k = <w_k, f>, the
weights never train, so the class directions, and with them the minimum angle between classes,
are known before training; plain softmax cross-entropy then pulls the features f of class k
towards w_k.

Contents, pure tensor functions first:
- `polytope_vertices(kind, K)` -> (V, d) unit rows; `polytope_dim`, `sylvester_hadamard`,
  `min_vertex_angle`.
- `fixed_logits`, `angular_margin_logits`, `margin_cross_entropy` (the CVPR-W margin variant,
  reconstructed: see `FixedClassifier`).
- `center_loss` (Wen et al. 2016, with the paper's centre update as the centres' gradient).
- `neural_collapse` (NC1-NC4 of Papyan, Han & Donoho 2020), `parameter_counts`.
- Modules: `FixedClassifier`, `HadamardClassifier` (Hoffer et al. 2018), `CenterLoss`.
- `classifier(head, K, d, ...)`: a head of `HEADS` by name; of a trained head:
  `class_directions`, `embedding_loss` (its training loss, + Center Loss), `CollapseTracker`
  (NC measures of the probe after every epoch of `fit`), `center_fit` (how close Center Loss's
  centres sit to the class means, a `CenterFit`).
- The issue's acceptance check, as data: `AcceptanceRow`, `Acceptance`, `acceptance_table`
  (`reponet_experiments.acceptance` builds it from runs).

The maths with its symbols, the defaults, the comparison with the authors' code and every
deviation (including the open one of Center Loss's centres under AdamW) are in
`docs/methods/reponet.md`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labkit.core.evaluate import alignment_to_targets, class_means
from labkit.core.report import text_table

KINDS = ("simplex", "cube", "orthoplex", "polygon", "hadamard")


# ----------------------------------------------------------------------------- geometry

def _check_kind(kind: str, num_classes: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown polytope kind {kind!r}; use one of {', '.join(KINDS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"a polytope classifier needs an integer num_classes >= 2, got {num_classes!r}")


def polytope_dim(kind: str, num_classes: int) -> int:
    """The feature dimension d that `kind` needs for K = `num_classes` classes.

    simplex: K - 1; cube: ceil(log2 K); orthoplex: ceil(K / 2); polygon: 2;
    hadamard: the smallest power of two >= K (the size at which Hoffer's rows are orthogonal).
    """
    _check_kind(kind, num_classes)
    if kind == "simplex":
        return num_classes - 1
    if kind == "cube":
        return max(1, math.ceil(math.log2(num_classes)))
    if kind == "orthoplex":
        return math.ceil(num_classes / 2)
    if kind == "polygon":
        return 2
    return 1 << math.ceil(math.log2(num_classes))


def sylvester_hadamard(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sylvester's Hadamard matrix H_n (n, n) with +-1 entries; n must be a power of two."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Sylvester's construction needs n = a power of two, got {n}")
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _simplex(num_classes: int) -> torch.Tensor:
    # The official construction: e_1..e_d plus alpha * 1, alpha = (1 - sqrt(d + 1)) / d, makes
    # d + 1 equidistant points; centring and scaling gives unit rows with cos = -1/d.
    d = num_classes - 1
    alpha = (1.0 - math.sqrt(d + 1)) / d
    v = torch.cat([torch.eye(d, dtype=torch.float64), torch.full((1, d), alpha, dtype=torch.float64)])
    v = v - v.mean(0, keepdim=True)
    return v / v[0].norm()


def _cube(d: int) -> torch.Tensor:
    # Row t, coordinate i is +1 when bit i of t is 0 (the official ordering).
    t = torch.arange(2**d)[:, None]
    bits = (t >> torch.arange(d)[None, :]) & 1
    return (1.0 - 2.0 * bits.double()) / math.sqrt(d)


def _orthoplex(d: int) -> torch.Tensor:
    eye = torch.eye(d, dtype=torch.float64)
    return torch.cat([eye, -eye])


def _polygon(num_classes: int) -> torch.Tensor:
    angles = 2 * math.pi * torch.arange(num_classes, dtype=torch.float64) / num_classes
    return torch.stack([angles.cos(), angles.sin()], 1)


def _hadamard(num_classes: int, feat_dim: int) -> torch.Tensor:
    n = 1 << math.ceil(math.log2(max(num_classes, feat_dim)))
    return sylvester_hadamard(n, torch.float64)[:num_classes, :feat_dim] / math.sqrt(feat_dim)


def polytope_vertices(kind: str, num_classes: int, feat_dim: int | None = None, *,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The fixed classifier rows W (V, d), unit norm, V >= K.

    kind: "simplex" (V = K, d = K - 1, pairwise cos = -1/d), "cube" (V = 2^d, d = ceil(log2 K),
    entries +-1/sqrt(d)), "orthoplex" (V = 2d, d = ceil(K / 2), rows [I; -I]), "polygon"
    (V = K, d = 2, w_k = (cos 2 pi k/K, sin 2 pi k/K)) or "hadamard" (V = K, Hoffer's
    H_n[:K, :d] / sqrt(d) with n = 2^ceil(log2 max(K, d)); d defaults to the next power of two
    >= K, where the rows are orthogonal).

    Classes 0..K-1 take the first K rows. A cube or orthoplex with more vertices than classes
    returns the spare rows too (as the official code does: they stay in the softmax denominator
    but are never targets). `feat_dim`, when given, must equal the polytope's d (for hadamard it
    may be any d >= K).
    """
    _check_kind(kind, num_classes)
    d = polytope_dim(kind, num_classes)
    if kind == "hadamard":
        if feat_dim is not None:
            if feat_dim < num_classes:
                raise ValueError(f"a Hadamard classifier for {num_classes} classes needs "
                                 f"feat_dim >= {num_classes} (else rows repeat), got {feat_dim}")
            d = feat_dim
        return _hadamard(num_classes, d).to(dtype)
    if feat_dim is not None and feat_dim != d:
        raise ValueError(f"a {kind} for {num_classes} classes lives in d = {d} dimensions, got "
                         f"feat_dim = {feat_dim}; build the network with feat_dim={d}")
    if kind == "simplex":
        w = _simplex(num_classes)
    elif kind == "cube":
        w = _cube(d)
    elif kind == "orthoplex":
        w = _orthoplex(d)
    else:
        w = _polygon(num_classes)
    return w.to(dtype)


def min_vertex_angle(vertices: torch.Tensor) -> float:
    """phi: the smallest angle (radians) between two distinct rows of `vertices` (V, d)."""
    if vertices.ndim != 2 or vertices.shape[0] < 2:
        raise ValueError(f"vertices must be (V >= 2, d), got shape {tuple(vertices.shape)}")
    unit = F.normalize(vertices.double(), dim=1)
    cos = unit @ unit.T
    cos.fill_diagonal_(-1.0)
    return math.acos(min(1.0, cos.max().item()))


# ----------------------------------------------------------------------------- logits and losses

def fixed_logits(features: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """z = f W^T: (B, d), (V, d) -> (B, V). No normalisation: ||f|| acts as inverse temperature."""
    if features.shape[-1] != vertices.shape[1]:
        raise ValueError(f"features have dim {features.shape[-1]} but the classifier expects "
                         f"d = {vertices.shape[1]}")
    return F.linear(features, vertices.to(features.dtype))


def _cosines(features: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    return F.linear(F.normalize(features, dim=-1), F.normalize(vertices.to(features.dtype), dim=-1))


def angular_margin_logits(features: torch.Tensor, vertices: torch.Tensor, labels: torch.Tensor,
                          margin: float, scale: float) -> torch.Tensor:
    """Additive angular margin logits: s cos(theta_y + m) for the target, s cos(theta_j) otherwise.

    features (B, d), vertices (V, d), labels (B,) -> (B, V); theta_j is the angle between f and
    w_j. Where theta_y + m would pass pi, cos(theta_y + m) stops decreasing, so we continue it by
    cos(theta_y) - 1 + cos(m) (continuous at theta_y = pi - m, still decreasing): our choice, the
    papers do not say.
    """
    if not 0.0 <= margin <= math.pi:
        raise ValueError(f"margin must be in [0, pi] radians, got {margin}")
    cos = _cosines(features, vertices)
    cos_y = cos.gather(1, labels[:, None]).clamp(-1 + 1e-7, 1 - 1e-7)
    theta_y = torch.acos(cos_y)
    psi = torch.where(theta_y <= math.pi - margin, torch.cos(theta_y + margin),
                      cos_y - 1.0 + math.cos(margin))
    return scale * cos.scatter(1, labels[:, None], psi)


def margin_cross_entropy(features: torch.Tensor, vertices: torch.Tensor, labels: torch.Tensor,
                         margin: float, scale: float) -> torch.Tensor:
    """Mean softmax cross-entropy of `angular_margin_logits` (ArcFace form)."""
    return F.cross_entropy(angular_margin_logits(features, vertices, labels, margin, scale), labels)


class _CenterLossFunction(torch.autograd.Function):
    """lambda * L_C with dL/dx_i = lambda (x_i - c_{y_i}) / M and, for the centres, the paper's
    update direction Delta c_j (independent of lambda) instead of the autograd gradient."""

    @staticmethod
    def forward(ctx, features, labels, centers, lam):
        diff = features - centers.index_select(0, labels)
        ctx.save_for_backward(diff, labels)
        ctx.lam, ctx.num_classes = lam, centers.shape[0]
        return lam * 0.5 * diff.pow(2).sum() / features.shape[0]

    @staticmethod
    def backward(ctx, grad):
        diff, labels = ctx.saved_tensors
        grad_features = grad * ctx.lam * diff / diff.shape[0]
        # Delta c_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j); c_j - x_i = -diff_i.
        sums = torch.zeros(ctx.num_classes, diff.shape[1], dtype=diff.dtype, device=diff.device)
        sums.index_add_(0, labels, -diff)
        counts = torch.bincount(labels, minlength=ctx.num_classes).to(diff.dtype)
        grad_centers = grad * sums / (1.0 + counts)[:, None]
        return grad_features, None, grad_centers, None


def center_loss(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor,
                lam: float = 1.0) -> torch.Tensor:
    """Wen et al.'s Center Loss, lambda * L_C, L_C = 1/(2M) sum_i ||x_i - c_{y_i}||^2.

    features (B, d) = x, labels (B,) = y, centers (K, d) = c. The features get the true gradient
    lambda (x_i - c_{y_i}) / M (batch-averaged, as in the official Caffe layer). The centres get
    Delta c_j = sum_{y_i = j} (c_j - x_i) / (1 + n_j) as their ".grad", whatever lambda is, so a
    plain SGD step with learning rate alpha (no momentum, no weight decay) performs the paper's
    update c_j <- c_j - alpha Delta c_j with alpha separate from lambda.
    """
    if features.ndim != 2 or centers.ndim != 2 or features.shape[1] != centers.shape[1]:
        raise ValueError(f"features (B, d) and centers (K, d) must share d, got "
                         f"{tuple(features.shape)} and {tuple(centers.shape)}")
    if labels.shape != features.shape[:1]:
        raise ValueError(f"labels must be (B,) = ({features.shape[0]},), got {tuple(labels.shape)}")
    return _CenterLossFunction.apply(features, labels, centers, float(lam))


# ----------------------------------------------------------------------------- modules

class FixedClassifier(nn.Module):
    """A regular-polytope classifier: logits = f W^T with W = `polytope_vertices(kind, K)`.

    W is a buffer (never a parameter: optimisers, weight decay and momentum cannot touch it) and
    is never modified; it is stored unit-norm, so there is no renormalisation in forward. No bias.
    Output has V >= K columns (spare cube/orthoplex vertices stay in the softmax, never targets).
    Feed it the raw embedding: no ReLU or BatchNorm in between (f must reach negative coordinates).

    Margin variant (CVPR-W "Margin-RePoNets"), `margin` = None (plain), "max" or a float (radians):
    forward returns s cos(theta_j) and `loss(f, y)` uses the additive angular margin (ArcFace
    form). RECONSTRUCTED (`docs/methods/reponet.md`, "Deviations"; not verified against the
    paper's body): that the paper's margin loss is ArcFace's, and the scale s (default 16);
    "max" sets m = phi, the angle between neighbouring vertices, the largest margin the paper
    describes ("maximal compactness").
    """

    def __init__(self, kind: str, num_classes: int, feat_dim: int | None = None, *,
                 margin: float | str | None = None, scale: float = 16.0) -> None:
        super().__init__()
        weight = polytope_vertices(kind, num_classes, feat_dim)
        self.register_buffer("weight", weight)
        self.kind, self.num_classes = kind, num_classes
        self.feat_dim, self.num_outputs = weight.shape[1], weight.shape[0]
        self.phi = min_vertex_angle(weight)
        if margin == "max":
            margin = self.phi
        if margin is not None:
            # m = pi is "max" for two antipodal classes: every target angle takes the continuation
            if isinstance(margin, str) or not 0.0 <= float(margin) <= math.pi:
                raise ValueError(f"margin must be None, 'max' or radians in [0, pi], got {margin!r}")
            if scale <= 0:
                raise ValueError(f"scale must be positive, got {scale}")
            margin = float(margin)
        self.margin, self.scale = margin, float(scale)

    @property
    def class_directions(self) -> torch.Tensor:
        """The K target vertices (K, d) (spare vertices excluded)."""
        return self.weight[: self.num_classes]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.margin is None:
            return fixed_logits(features, self.weight)
        if features.shape[-1] != self.feat_dim:
            raise ValueError(f"features have dim {features.shape[-1]}, expected {self.feat_dim}")
        return self.scale * _cosines(features, self.weight)

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Training loss: cross-entropy of the logits, with the angular margin when one is set."""
        if self.margin is None:
            return F.cross_entropy(self(features), labels)
        return margin_cross_entropy(features, self.weight, labels, self.margin, self.scale)

    def extra_repr(self) -> str:
        return (f"kind={self.kind}, num_classes={self.num_classes}, feat_dim={self.feat_dim}, "
                f"outputs={self.num_outputs}, margin={self.margin}")


class HadamardClassifier(nn.Module):
    """Hoffer et al. 2018: y = alpha * H x_hat + b, H = H_n[:K, :d] (+-1 entries, a buffer),
    x_hat = x / ||x||, learned scalar alpha (init 1/sqrt(K)) and bias b (init U(+-1/sqrt(K))).

    Deviation: the official `HadamardProj` multiplies by -alpha; we use +alpha (alpha is learned).
    The rows are mutually orthogonal when d is a power of two >= K (the default d).
    """

    def __init__(self, num_classes: int, feat_dim: int | None = None) -> None:
        super().__init__()
        unit = polytope_vertices("hadamard", num_classes, feat_dim)
        self.num_classes = self.num_outputs = num_classes
        self.feat_dim = unit.shape[1]
        self.register_buffer("weight", torch.round(unit * math.sqrt(self.feat_dim)))
        bound = 1.0 / math.sqrt(num_classes)
        self.scale = nn.Parameter(torch.tensor(bound))
        self.bias = nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound))

    @property
    def class_directions(self) -> torch.Tensor:
        return self.weight / math.sqrt(self.feat_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] != self.feat_dim:
            raise ValueError(f"features have dim {features.shape[-1]}, expected {self.feat_dim}")
        return self.scale * F.linear(F.normalize(features, dim=-1), self.weight.to(features.dtype)) + self.bias

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(features), labels)


class CenterLoss(nn.Module):
    """Wen et al. 2016: lambda * L_C with learnable centres c (K, d).

    Centres start Glorot-uniform, U(+-sqrt(6 / (K + d))). The official Caffe layer's Xavier filler
    uses the fan-in only, U(+-sqrt(3 / d)) (+-1.22 against our +-0.71 for MNIST's K = 10, d = 2):
    a known deviation, kept because the stored runs were trained with it.

    The centres get their own optimiser, `optimizer()`: plain SGD at lr = alpha, no momentum, no
    weight decay and no schedule, so each step is exactly c_j <- c_j - alpha Delta c_j (see
    `center_loss`), whatever optimiser and schedule train the network (pass it to
    `fit(..., side_optimizers=[...])`). That holds when the loss is backpropagated with weight
    1: the centres' gradient is Delta c_j times the upstream gradient, so
    `(L_S + L_C) / accum_steps` scales alpha too. The softmax part L_S is the caller's (a
    learned linear head).
    """

    def __init__(self, num_classes: int, feat_dim: int, lam: float = 0.01, alpha: float = 0.5) -> None:
        super().__init__()
        if num_classes < 2 or feat_dim < 1:
            raise ValueError(f"need num_classes >= 2 and feat_dim >= 1, got {num_classes}, {feat_dim}")
        if lam < 0 or alpha < 0:
            raise ValueError(f"lambda and alpha must be >= 0, got lam={lam}, alpha={alpha}")
        self.centers = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_classes, feat_dim)))
        self.lam, self.alpha = float(lam), float(alpha)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return center_loss(features, labels, self.centers, self.lam)

    def optimizer(self) -> torch.optim.SGD:
        """The centres' own optimiser, realising Wen et al.'s update at a constant alpha."""
        return torch.optim.SGD([self.centers], lr=self.alpha, momentum=0.0, weight_decay=0.0)


# ----------------------------------------------------------------------------- measures

def parameter_counts(module: nn.Module) -> dict[str, int]:
    """{"trainable": parameters with requires_grad, "fixed": frozen parameters + buffers}."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    return {"trainable": trainable, "fixed": frozen + sum(b.numel() for b in module.buffers())}


def _class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    return sums / torch.bincount(labels, minlength=num_classes).to(features.dtype)[:, None]


def neural_collapse(features: torch.Tensor, labels: torch.Tensor,
                    weight: torch.Tensor | None = None,
                    predictions: torch.Tensor | None = None) -> dict[str, float]:
    """Papyan, Han & Donoho (2020) neural-collapse measures (all 0 at perfect collapse).

    features h (N, d), labels (N,) covering classes 0..K-1, weight W (K, d) the classifier rows
    of those K classes, predictions (N,) the classifier's argmax. With class means mu_c, global
    mean mu_G, M = [mu_c - mu_G] (K, d):
    - nc1 = tr(Sigma_W Sigma_B^+) / K (within- over between-class variability);
    - nc2 = || M M^T / ||M M^T||_F - (I - 11^T/K) / sqrt(K-1) ||_F (distance to a simplex ETF),
      with its parts nc2_equinorm = std/mean of ||mu_c - mu_G|| and nc2_equiangular = std of the
      pairwise cosines of the centred means;
    - nc3 = || W / ||W||_F - M / ||M||_F ||_F (self-duality), only with `weight`;
    - nc4 = fraction of samples where the classifier disagrees with the nearest-class-mean rule,
      only with `predictions`.
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"need features (N, d) and labels (N,), got {tuple(features.shape)} "
                         f"and {tuple(labels.shape)}")
    h = features.detach().double()
    labels = labels.to(h.device)
    num_classes = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=num_classes)
    if num_classes < 2 or bool((counts == 0).any()):
        raise ValueError(f"labels must cover every class 0..K-1 with K >= 2; counts {counts.tolist()}")
    mu = _class_means(h, labels, num_classes)
    mu_g = h.mean(0)
    m = mu - mu_g
    within = h - mu[labels]
    sigma_w = within.T @ within / h.shape[0]
    sigma_b = m.T @ m / num_classes
    if not bool(torch.isfinite(h).all()):
        raise ValueError("features contain NaN or inf (did training diverge?)")
    # SVD-based pseudo-inverse: eigh fails to converge on the near-degenerate Sigma_B of
    # barely trained networks
    out: dict[str, float] = {
        "nc1": (torch.trace(sigma_w @ torch.linalg.pinv(sigma_b)) / num_classes).item()}
    gram = m @ m.T
    eye = torch.eye(num_classes, dtype=h.dtype, device=h.device)
    etf = (eye - 1.0 / num_classes) / math.sqrt(num_classes - 1)
    out["nc2"] = (gram / gram.norm() - etf).norm().item()
    norms = m.norm(dim=1)
    out["nc2_equinorm"] = (norms.std() / norms.mean()).item()
    cos = (m / norms[:, None]) @ (m / norms[:, None]).T
    off = ~torch.eye(num_classes, dtype=torch.bool, device=h.device)
    out["nc2_equiangular"] = cos[off].std().item() if num_classes > 2 else 0.0
    if weight is not None:
        w = weight.detach().double().to(h.device)
        if w.shape != m.shape:
            raise ValueError(f"weight must be (K, d) = {tuple(m.shape)}, got {tuple(w.shape)}")
        out["nc3"] = (w / w.norm() - m / m.norm()).norm().item()
    if predictions is not None:
        nearest = torch.cdist(h, mu).argmin(1)
        out["nc4"] = (predictions.to(h.device) != nearest).double().mean().item()
    return out


# ----------------------------------------------------------------------------- heads by name

HEADS = ("learned", "center", "simplex", "cube", "orthoplex", "polygon", "hadamard")
POLYTOPES = ("simplex", "cube", "orthoplex", "polygon")


def classifier(head: str, num_classes: int, feat_dim: int, *, margin_fraction: float | None = None,
               scale: float = 16.0) -> nn.Module:
    """The classifier named `head` (one of `HEADS`) for features (B, d): a fixed polytope, with
    the angular margin m = margin_fraction * phi when a fraction is given; Hoffer's Hadamard
    head; or a learned linear layer without bias ("learned", and "center", whose Center Loss
    is a separate module)."""
    if head in POLYTOPES:
        margin = None
        if margin_fraction is not None:  # phi: the angle between neighbouring vertices
            margin = margin_fraction * min_vertex_angle(polytope_vertices(head, num_classes,
                                                                          feat_dim))
        return FixedClassifier(head, num_classes, feat_dim, margin=margin, scale=scale)
    if head == "hadamard":
        return HadamardClassifier(num_classes, feat_dim)
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; use one of {', '.join(HEADS)}")
    return nn.Linear(feat_dim, num_classes, bias=False)


# ----------------------------------------------------------------------------- a trained head

def class_directions(head: nn.Module) -> torch.Tensor:
    """The K class directions (K, d) of a head: its fixed target vertices, or a learned head's
    weight rows (float32, CPU)."""
    if hasattr(head, "class_directions"):
        return head.class_directions.detach().float().cpu()
    return head.weight.detach().float().cpu()


def embedding_loss(head: nn.Module, features: torch.Tensor, labels: torch.Tensor,
                   center: CenterLoss | None = None) -> torch.Tensor:
    """The training loss of features (B, d) with labels (B,): the head's own loss (the margin
    variant's) or softmax cross-entropy of its logits, + lambda L_C with Center Loss."""
    if hasattr(head, "loss"):
        loss = head.loss(features, labels)
    else:
        loss = F.cross_entropy(head(features), labels)
    if center is not None:
        loss = loss + center(features, labels)
    return loss


class CollapseTracker:
    """A `fit` callback: after each epoch, the neural-collapse measures of the latest probe
    snapshot (train-set embeddings, as in Papyan et al.), written into that epoch's history row.
    `model` has a `.head`; `probe_labels` (N,) are the snapshot's labels."""

    def __init__(self, model: nn.Module, probe_labels: torch.Tensor) -> None:
        self.model, self.labels = model, probe_labels.cpu()

    def measures(self, features: torch.Tensor) -> dict[str, float]:
        """`neural_collapse` of probe features (N, d) against the head's directions and argmax."""
        device = next(self.model.parameters()).device
        with torch.no_grad():
            predictions = self.model.head(features.to(device)).argmax(1).cpu()
        return neural_collapse(features, self.labels, class_directions(self.model.head),
                               predictions)

    def on_epoch_end(self, state: Any) -> None:
        row = state.history.epochs[-1]
        if state.history.snapshot_epochs and state.history.snapshot_epochs[-1] == row["epoch"]:
            row.update(self.measures(state.history.snapshots[-1]))


@dataclass(frozen=True)
class CenterFit:
    """How Center Loss's centres c_k sit on the class means mu_k: angles in degrees, distances
    in feature units, mean and worst over the classes."""

    mean_angle_deg: float
    max_angle_deg: float
    mean_distance: float
    max_distance: float


def center_fit(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> CenterFit:
    """`CenterFit` of centres (K, d) against the class means of features (N, d), labels (N,)."""
    angles = alignment_to_targets(features, labels, centers)
    distances = (class_means(features, labels) - centers).norm(dim=1)
    return CenterFit(float(angles.mean()), float(angles.max()), float(distances.mean()),
                     float(distances.max()))


# ----------------------------------------------------------------------------- the bound check
# Every fixed polytope within a gap of accuracy points of the learned head at the same d, and its
# class means within an angle of their vertices: bounds, not a comparison paired over seeds.

@dataclass(frozen=True)
class AcceptanceRow:
    """One fixed polytope against the learned head at its d (accuracies in percent)."""

    run: str
    seed: int
    accuracy: float
    learned_accuracy: float
    gap_points: float  # learned minus fixed
    max_angle_to_vertex: float  # the worst test class mean, degrees
    spread_deg: float
    passed: bool


@dataclass(frozen=True)
class Acceptance:
    """The check over the fixed polytopes (plain, or with `margin` the margin variants)."""

    passed: bool
    rows: tuple[AcceptanceRow, ...]
    margin: bool
    max_gap: float
    max_angle: float


def acceptance_table(checks: Sequence[Acceptance], digits: int = 2) -> str:
    """The rows of `checks` as one text table (percent and degrees with `digits` decimals)."""
    header = ["run", "seed", "acc %", "learned acc %", "gap", "worst°", "spread°", "passed"]
    rows = [[row.run, row.seed, row.accuracy, row.learned_accuracy, row.gap_points,
             row.max_angle_to_vertex, row.spread_deg, row.passed]
            for check in checks for row in check.rows]
    return text_table(header, rows, digits=digits)
