"""Experiment runners for notebook 01 (Regular Polytope Networks): one config dict per run,
`run(cfg)` trains (or loads from the cache) and returns everything the figures need.

A run = LeNet++ (or a CIFAR ResNet in the `full` profile) with a feature dim d and one head:
"learned" (nn.Linear, no bias), "center" (learned + Center Loss), a fixed polytope
("simplex", "cube", "orthoplex", "polygon", optionally with the angular margin) or
"hadamard" (Hoffer et al.). Per epoch it records embeddings of a fixed probe subset of the
training set and the neural-collapse measures on them; at the end it embeds the test set.

The defaults per profile, the acceptance check (the margin variant, m = phi / 2) and the
deviations of this recipe from the papers' are in `docs/methods/reponet.md`; trials run
outside the notebook are in `docs/findings/01_regular_polytope_networks.md`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labkit.core import config, evaluate
from labkit.core.cache import cached
from labkit.core.data import ArrayDataset, load_memoised
from labkit.core.models import Network, build_network, lenetpp_options
from labkit.core.train import fit
from labkit.methods import reponet as rp

HEADS = ("learned", "center", "simplex", "cube", "orthoplex", "polygon", "hadamard")
POLYTOPES = ("simplex", "cube", "orthoplex", "polygon")


def recipe() -> dict[str, Any]:
    """The profile's training recipe: AdamW (lr 2e-3, decoupled weight decay 0.05), cosine
    schedule; in `lab`, the slim LeNet++ of `lenetpp_options` on all 4,000 training digits.
    SGD with momentum at lr >= 0.02 diverged in the first steps of LeNet++ with a fixed head here
    (unnormalised features, no BN on the feature layer); Adam did not. A 30-epoch SGD run
    (lr 0.05, weight decay 5e-4) trained fine but left the class means further from their
    vertices than AdamW (39 vs 26 degrees on average).
    """
    return config.pick(
        quick=dict(dataset="mnist5k", arch="lenetpp", train_per_class=150, probe_per_class=10,
                   test_per_class=30,
                   epochs=3, batch_size=32, lr=2e-3, optimizer="adamw", weight_decay=0.05),
        lab=dict(dataset="mnist5k", arch="lenetpp", train_per_class=None, probe_per_class=30,
                 test_per_class=None,
                 epochs=10, batch_size=64, lr=2e-3, optimizer="adamw", weight_decay=0.05),
        full=dict(dataset="mnist", arch="lenetpp", train_per_class=None, probe_per_class=100,
                  test_per_class=None,
                  epochs=20, batch_size=128, lr=2e-3, optimizer="adamw", weight_decay=0.05),
    )


def run_config(head: str, *, classes: int | Sequence[int] = 10, feat_dim: int | None = None,
               margin: bool = False, seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """A run's full config (the cache key): the profile's recipe plus the head's settings.

    classes: K (the first K classes) or explicit class ids. feat_dim defaults to the polytope's
    own d (learned/center heads need it). overrides: any recipe key (epochs, lr, dataset, arch,
    train_per_class, ...), `lam`/`alpha` for Center Loss, `scale` and `margin_fraction` for the
    margin variant (m = margin_fraction * phi; the default 0.5 is our choice, see below).

    The margin: the CVPR-W paper sets it "at the maximum allowed (i.e. phi)". With the additive
    angular margin (our reconstruction) m = phi is degenerate: a feature exactly on its vertex
    then scores s cos(phi) for its class, the same as for its neighbours, so the loss can never
    fall below that of a tie (a 4-epoch lab trial collapsed to 36.9% accuracy). Any m < phi is
    satisfiable; m = phi / 2 pulled the class means to within 9 degrees of their vertices at the
    learned classifier's accuracy in a 10-epoch lab run (m = phi / 4: 16 degrees).
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; use one of {', '.join(HEADS)}")
    ids = list(range(classes)) if isinstance(classes, int) else [int(c) for c in classes]
    if len(ids) < 2:
        raise ValueError(f"need at least 2 classes, got {ids}")
    k = len(ids)
    if is_fixed_head(head):
        natural = rp.polytope_dim(head, k)
        feat_dim = natural if feat_dim is None else feat_dim
        rp.polytope_vertices(head, k, feat_dim)  # raises a clear error on an impossible d
    elif feat_dim is None or feat_dim < 1:
        raise ValueError(f"a {head} head needs feat_dim >= 1, got {feat_dim}")
    if margin and head not in POLYTOPES:
        raise ValueError(f"the angular margin applies to fixed polytopes, not to {head!r}")
    base = recipe()
    arch = overrides.get("arch", base["arch"])
    cfg = dict(base, backbone=lenetpp_options() if arch == "lenetpp" else {},
               head=head, classes=ids, feat_dim=int(feat_dim), margin=bool(margin),
               seed=int(seed), lam=0.01, alpha=0.5, scale=16.0, margin_fraction=0.5,
               neck_weight_decay=base["weight_decay"])
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(cfg)}")
    cfg.update(overrides)
    return cfg


def label(cfg: dict[str, Any]) -> str:
    """A short run name, e.g. 'simplex d=9' or 'learned d=2'."""
    name = cfg["head"] + ("+margin" if cfg["margin"] else "")
    return f"{name} d={cfg['feat_dim']}"


def make_head(cfg: dict[str, Any]) -> nn.Module:
    k, d = len(cfg["classes"]), cfg["feat_dim"]
    if cfg["head"] in POLYTOPES:
        margin = None
        if cfg["margin"]:  # a fraction of phi, the angle between neighbouring vertices
            margin = cfg["margin_fraction"] * rp.min_vertex_angle(
                rp.polytope_vertices(cfg["head"], k, d))
        return rp.FixedClassifier(cfg["head"], k, d, margin=margin, scale=cfg["scale"])
    if cfg["head"] == "hadamard":
        return rp.HadamardClassifier(k, d)
    return nn.Linear(d, k, bias=False)


def build_model(cfg: dict[str, Any]) -> Network:
    image_size = 32 if cfg["dataset"].startswith("cifar") else 28
    channels = 3 if cfg["dataset"].startswith("cifar") else 1
    return build_network(cfg["arch"], channels, len(cfg["classes"]), cfg["feat_dim"],
                         head=make_head(cfg), image_size=image_size, **cfg["backbone"])


def is_fixed_head(head: str) -> bool:
    """Whether the classifier `head` is fixed (a polytope or Hadamard vertices, not trained)."""
    return head in POLYTOPES or head == "hadamard"


def class_directions(model: Network) -> torch.Tensor:
    """The K class directions (K, d) of a head: fixed vertices or learned weight rows."""
    head = model.head
    if hasattr(head, "class_directions"):
        return head.class_directions.detach().float().cpu()
    return head.weight.detach().float().cpu()


def embedding_loss(net: Network, embedding: torch.Tensor, labels: torch.Tensor,
                   center: rp.CenterLoss | None = None) -> torch.Tensor:
    """The head's loss of features (B, d) with labels (B,) (+ lambda L_C for Center Loss)."""
    if hasattr(net.head, "loss"):
        loss = net.head.loss(embedding, labels)
    else:
        loss = F.cross_entropy(net.head(embedding), labels)
    if center is not None:
        loss = loss + center(embedding, labels)
    return loss


def make_loss(center: rp.CenterLoss | None = None) -> Callable:
    """loss_fn(model, images, labels) for `fit`: the head's loss (+ lambda L_C for Center Loss)."""

    def loss_fn(net: Network, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return embedding_loss(net, net.neck(net.backbone(images)), labels, center)

    return loss_fn


class CollapseTracker:
    """A `fit` callback: after each epoch, neural-collapse measures of the latest probe snapshot
    (train-set embeddings, as in Papyan et al.), written into that epoch's history row."""

    def __init__(self, model: Network, probe_labels: torch.Tensor) -> None:
        self.model, self.labels = model, probe_labels.cpu()

    def measures(self, features: torch.Tensor) -> dict[str, float]:
        device = next(self.model.parameters()).device
        with torch.no_grad():
            predictions = self.model.head(features.to(device)).argmax(1).cpu()
        return rp.neural_collapse(features, self.labels, class_directions(self.model), predictions)

    def on_epoch_end(self, state: Any) -> None:
        row = state.history.epochs[-1]
        if state.history.snapshot_epochs and state.history.snapshot_epochs[-1] == row["epoch"]:
            row.update(self.measures(state.history.snapshots[-1]))


def load_data(cfg: dict[str, Any]) -> tuple[ArrayDataset, ArrayDataset, ArrayDataset]:
    """(train, test, probe) for the run's classes; probe = a seeded per-class subset of train."""
    train = load_memoised(cfg["dataset"], "train").subset_classes(cfg["classes"])
    test = load_memoised(cfg["dataset"], "test").subset_classes(cfg["classes"])
    if cfg["train_per_class"]:
        train = train.k_per_class(cfg["train_per_class"], seed=cfg["seed"])
    if cfg["test_per_class"]:
        test = test.k_per_class(cfg["test_per_class"], seed=cfg["seed"])
    probe = train.k_per_class(min(cfg["probe_per_class"], int(train.class_counts().min())),
                              seed=cfg["seed"] + 1)
    return train, test, probe


def make_training(cfg: dict[str, Any], model: Network, device: torch.device
                  ) -> tuple[list[dict[str, Any]], rp.CenterLoss | None]:
    """(param_groups of the network, Center Loss or None) of cfg, the centres on `device`.
    `train` and `labkit train` both build their training here."""
    neck = [p for p in model.neck.parameters() if p.requires_grad]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("neck.")]
    # The embedding layer may get its own weight decay (`neck_weight_decay`, default = the
    # recipe's): it is what bounds ||f||. A strong one (20 with AdamW) cost accuracy here without
    # bringing class means closer to their vertices in a 5-epoch run.
    groups = [{"params": rest}, {"params": neck, "weight_decay": cfg["neck_weight_decay"]}]
    center = None
    if cfg["head"] == "center":
        center = rp.CenterLoss(len(cfg["classes"]), cfg["feat_dim"], cfg["lam"], cfg["alpha"])
        center.to(device)
    return groups, center


def train(cfg: dict[str, Any], *, progress: bool = True, callbacks: Sequence[Any] = (),
          device: torch.device | str | None = None) -> dict[str, Any]:
    """Train one run now (no cache) and return its results (see `run`) plus the "model"."""
    device = torch.device(device) if device is not None else config.get_device()
    train_set, test, probe = load_data(cfg)
    config.seed_everything(cfg["seed"])
    model = build_model(cfg)
    groups, center = make_training(cfg, model, device)
    side_optimizers = [center.optimizer()] if center is not None else []
    tracker = CollapseTracker(model, probe.labels)
    history = fit(model, make_loss(center), train_set, epochs=cfg["epochs"],
                  batch_size=cfg["batch_size"], optimizer=cfg["optimizer"], lr=cfg["lr"], momentum=0.9,
                  weight_decay=cfg["weight_decay"], schedule="cosine", param_groups=groups,
                  device=device, probe=probe.images, callbacks=[tracker, *callbacks],
                  seed=cfg["seed"], progress=progress, side_optimizers=side_optimizers)
    return results(cfg, model, center, history, test, probe, device)


def results(cfg: dict[str, Any], model: Network, center: rp.CenterLoss | None, history: Any,
            test: ArrayDataset, probe: ArrayDataset, device: torch.device) -> dict[str, Any]:
    """A trained run's results (see `run`) plus the "model": `train`'s, after its `fit`."""
    features = evaluate.embed(model, test.images)
    logits = model.head(features.to(device)).detach().float().cpu()
    directions = class_directions(model)
    fixed = is_fixed_head(cfg["head"])
    head_counts = rp.parameter_counts(model.head)
    if center is not None:
        head_counts["trainable"] += rp.parameter_counts(center)["trainable"]
    geometry = evaluate.geometry_summary(features, test.labels, directions)
    centers = center.centers.detach().float().cpu() if center is not None else None
    return {
        "config": cfg, "label": label(cfg), "model": model, "history": history,
        "probe_labels": probe.labels.cpu(), "test_features": features, "test_labels": test.labels.cpu(),
        "accuracy": evaluate.accuracy(logits, test.labels),
        "geometry": geometry,
        "angle_to_direction": evaluate.alignment_to_targets(features, test.labels, directions),
        "collapse": rp.neural_collapse(features, test.labels, directions, logits.argmax(1)),
        "directions": directions, "fixed": fixed,
        "vertices": model.head.weight.detach().float().cpu() if cfg["head"] in POLYTOPES else directions,
        "head_params": head_counts,
        "total_trainable": rp.parameter_counts(model)["trainable"] + (
            rp.parameter_counts(center)["trainable"] if center is not None else 0),
        "train_seconds": sum(row["time"] for row in history.epochs),
        "centers": centers,
        "center_fit": center_fit(features, test.labels, centers) if centers is not None else None,
    }


def center_fit(features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor) -> dict[str, float]:
    """How well Center Loss centres c (K, d) sit on the class means of features (N, d): the mean
    and worst angle (degrees) between mean_k and c_k, and the mean and worst distance."""
    angles = evaluate.alignment_to_targets(features, labels, centers)
    distances = (evaluate.class_means(features, labels) - centers).norm(dim=1)
    return {"mean_angle_deg": float(angles.mean()), "max_angle_deg": float(angles.max()),
            "mean_distance": float(distances.mean()), "max_distance": float(distances.max())}


def run(cfg: dict[str, Any], *, progress: bool = True) -> dict[str, Any]:
    """`train(cfg)` through the config-keyed cache (the model's weights kept as a state_dict)."""

    return cached("reponet", cfg, lambda: stored(train(cfg, progress=progress)))


def stored(result: dict[str, Any]) -> dict[str, Any]:
    """`train`'s result as `run` caches it: the model replaced by its state_dict (in place)."""
    model = result.pop("model")
    result["state_dict"] = {k: v.cpu() for k, v in model.state_dict().items()}
    return result


def run_all(cfgs: Sequence[dict[str, Any]], *, progress: bool = True) -> list[dict[str, Any]]:
    return [run(cfg, progress=progress) for cfg in cfgs]


# ----------------------------------------------------------------------------- experiment sets

def planar_configs(seed: int = 0, **overrides: Any) -> list[dict[str, Any]]:
    """2-D features, all 10 classes: learned vs fixed regular 10-gon vs Center Loss."""
    return [run_config("learned", feat_dim=2, seed=seed, **overrides),
            run_config("polygon", seed=seed, **overrides),
            run_config("center", feat_dim=2, seed=seed, **overrides)]


def spatial_configs(seed: int = 0, baselines: bool = False, **overrides: Any) -> list[dict[str, Any]]:
    """3-D features: simplex (4 classes), orthoplex (6), cube (8); with `baselines`, learned and
    Center Loss on the 8 classes too (left out of the lab profile to save CPU time)."""
    cfgs = [run_config("simplex", classes=4, seed=seed, **overrides),
            run_config("orthoplex", classes=6, seed=seed, **overrides),
            run_config("cube", classes=8, seed=seed, **overrides)]
    if baselines:
        cfgs += [run_config("learned", classes=8, feat_dim=3, seed=seed, **overrides),
                 run_config("center", classes=8, feat_dim=3, seed=seed, **overrides)]
    return cfgs


def comparison_configs(seed: int = 0, hadamard: bool = False, margin: bool = False,
                       **overrides: Any) -> list[dict[str, Any]]:
    """All 10 classes, each polytope at its own d and a learned classifier at the same d; with
    `margin` also each polytope with the angular margin, with `hadamard` Hoffer's head."""
    cfgs = []
    for kind in ("simplex", "orthoplex", "cube"):
        d = rp.polytope_dim(kind, 10)
        cfgs += [run_config("learned", feat_dim=d, seed=seed, **overrides),
                 run_config(kind, seed=seed, **overrides)]
        if margin:
            cfgs.append(run_config(kind, margin=True, seed=seed, **overrides))
    if hadamard:
        cfgs.append(run_config("hadamard", seed=seed, **overrides))
    return cfgs


def acceptance(results: Sequence[dict[str, Any]], max_gap: float = 1.0,
               max_angle: float = 10.0, margin: bool = False) -> dict[str, Any]:
    """The issue's check: every fixed polytope within `max_gap` accuracy points of the learned
    classifier at the same d, and its test class means within `max_angle` degrees of their
    vertices; for the plain (softmax) polytopes, or with `margin` for the margin variants.
    Returns {"passed": bool, "rows": [...]} with the numbers behind it."""
    learned = {r["config"]["feat_dim"]: r for r in results
               if r["config"]["head"] == "learned" and not r["config"]["margin"]}
    rows = []
    for r in results:
        if r["config"]["head"] not in POLYTOPES or r["config"]["margin"] != margin:
            continue
        d = r["config"]["feat_dim"]
        if d not in learned:
            raise ValueError(f"no learned run with feat_dim={d} to compare {r['label']} with")
        gap = 100 * (learned[d]["accuracy"] - r["accuracy"])
        angle = float(r["angle_to_direction"].max())
        rows.append({"run": r["label"], "accuracy": 100 * r["accuracy"],
                     "learned_accuracy": 100 * learned[d]["accuracy"], "gap_points": gap,
                     "max_angle_to_vertex": angle,
                     "passed": bool(gap <= max_gap and angle <= max_angle)})
    if not rows:
        raise ValueError(f"no {'margin' if margin else 'plain'} fixed-polytope runs among the results")
    return {"passed": all(row["passed"] for row in rows), "rows": rows}


def summary_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run: accuracy, compactness/separation, NC measures and parameter counts."""
    rows = []
    for r in results:
        geometry, collapse = r["geometry"], r["collapse"]
        rows.append({
            "run": r["label"], "K": len(r["config"]["classes"]),
            "acc %": round(100 * r["accuracy"], 1),
            "spread°": round(geometry["spread_deg"], 1),
            "min angle°": round(geometry["min_angle_deg"], 1),
            "max to dir°": round(geometry["max_angle_to_target_deg"], 1),
            "NC1": round(collapse["nc1"], 3), "NC2": round(collapse["nc2"], 3),
            "head trainable": r["head_params"]["trainable"],
            "head fixed": r["head_params"]["fixed"],
            "total trainable": r["total_trainable"],
        })
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table (fixed-width columns) of `rows` (list of dicts with the same keys)."""
    if not rows:
        return ""
    keys = list(rows[0])
    cells = [[str(k) for k in keys]] + [[_fmt(row[k]) for k in keys] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(keys))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
             for line in cells]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if math.isfinite(value) else str(value)
    return str(value)
