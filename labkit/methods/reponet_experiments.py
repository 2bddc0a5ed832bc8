"""RePoNet experiments (notebook 01) on `labkit.core.experiment`'s contract: LeNet++ (or a CIFAR
ResNet) with one head of `reponet.HEADS`, recording the probe's embeddings and neural-collapse
measures after every epoch. The notebook's experiments are sweeps over `head`, `classes`,
`feat_dim`, `margin` and `seed`; `sweep()` alone is the 10-class comparison, whose claims pair
fixed heads with learned ones at the same d; `acceptance` is the issue's bound check. Defaults
and deviations: docs/methods/reponet.md; trials: docs/findings/01_regular_polytope_networks.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from labkit.core import config, experiment
from labkit.core.data import ArrayDataset, load_memoised
from labkit.core.evaluate import accuracy, alignment_to_targets, embed, geometry_summary
from labkit.core.experiment import Comparison, Summary
from labkit.core.models import Network, build_network
from labkit.core.report import text_table
from labkit.core.train import History, fit
from labkit.methods import reponet as rp

HEADS, POLYTOPES = rp.HEADS, rp.POLYTOPES
COMPARED = ("simplex", "orthoplex", "cube")  # the 10-class comparison: each at its own d
COLUMNS = (  # the table's: (metric, header, scale, digits)
    ("accuracy", "acc %", 100.0, 1), ("spread_deg", "spread°", 1.0, 1),
    ("min_angle_deg", "min angle°", 1.0, 1), ("max_angle_to_target_deg", "max to dir°", 1.0, 1),
    ("nc1", "NC1", 1.0, 3), ("nc2", "NC2", 1.0, 3), ("head_trainable", "head trainable", 1.0, 0),
    ("head_fixed", "head fixed", 1.0, 0), ("total_trainable", "total trainable", 1.0, 0))


@dataclass(frozen=True)
class Settings(experiment.Settings):
    """One run. Defaults: the lab profile (all of mnist5k, the slim LeNet++ of
    `core.models.lenetpp_options`, AdamW lr 2e-3 with decoupled weight decay 0.05 and a cosine
    schedule: SGD with momentum at lr >= 0.02 diverged here with a fixed head, see
    docs/methods/reponet.md). `classes` may be given as K (the first K classes); `feat_dim`
    None is a fixed head's own d, and a fixed head's own d is stored as None, so both
    spellings are one run. m = margin_fraction * phi (m = phi itself is degenerate)."""

    head: str = "simplex"
    classes: tuple[int, ...] = tuple(range(10))  # class ids (K = their number)
    feat_dim: int | None = None
    margin: bool = False  # the CVPR-W angular margin (fixed polytopes only)
    seed: int = 0
    dataset: str = "mnist5k"
    arch: str = "lenetpp"
    backbone: dict[str, Any] = field(  # the trunk's options ({} for other archs than lenetpp)
        default_factory=lambda: {"widths": (16, 32, 64), "kernel_size": 3})
    train_per_class: int | None = None  # None: every training image
    probe_per_class: int = 30
    test_per_class: int | None = None
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    neck_weight_decay: float = 0.05  # the feature layer's: it is what bounds ||f||
    lam: float = 0.01  # Center Loss lambda
    alpha: float = 0.5  # Center Loss centre rate
    scale: float = 16.0  # s of the margin variant
    margin_fraction: float = 0.5

    PROFILES: ClassVar = {
        "quick": dict(backbone={"widths": (8, 16, 32), "kernel_size": 3}, train_per_class=150,
                      probe_per_class=10, test_per_class=30, epochs=3, batch_size=32),
        "full": dict(dataset="mnist", backbone={"widths": (32, 64, 128), "kernel_size": 5},
                     probe_per_class=100, epochs=20, batch_size=128),
    }

    def __post_init__(self) -> None:
        classes = self.classes
        if isinstance(classes, int) and not isinstance(classes, bool):
            classes = range(classes)
        object.__setattr__(self, "classes", tuple(int(c) for c in classes))
        object.__setattr__(self, "backbone", {k: tuple(v) if isinstance(v, list) else v
                                              for k, v in dict(self.backbone).items()})
        super().__post_init__()
        if self.fixed and self.feat_dim == rp.polytope_dim(self.head, self.num_classes):
            object.__setattr__(self, "feat_dim", None)

    def check(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; use one of {', '.join(HEADS)}")
        if len(self.classes) < 2:
            raise ValueError(f"need at least 2 classes, got {list(self.classes)}")
        if self.fixed:
            rp.polytope_vertices(self.head, self.num_classes, self.feat_dim)  # an impossible d
        elif self.feat_dim is None or self.feat_dim < 1:
            raise ValueError(f"a {self.head} head needs feat_dim >= 1, got {self.feat_dim}")
        if self.margin and self.head not in POLYTOPES:
            raise ValueError(f"the angular margin applies to fixed polytopes, not to {self.head!r}")

    @property
    def fixed(self) -> bool:  # polytope or Hadamard vertices, never trained
        return self.head in POLYTOPES or self.head == "hadamard"

    @property
    def num_classes(self) -> int:  # K
        return len(self.classes)

    @property
    def dim(self) -> int:  # d: feat_dim, or the fixed head's own
        return rp.polytope_dim(self.head, self.num_classes) if self.feat_dim is None \
            else self.feat_dim

    @property
    def variant(self) -> str:  # "simplex", "simplex+margin", "learned", "center", ...
        return self.head + ("+margin" if self.margin else "")

    @property
    def label(self) -> str:  # a run's name, e.g. "simplex+margin d=9"
        return f"{self.variant} d={self.dim}"


@dataclass
class Result(experiment.Result):
    """A trained run. metrics: test accuracy, `geometry_summary`, `neural_collapse` (nc1-nc4)
    and the head's parameter counts (Center Loss's centres count as trainable head weights).
    Tensors: probe_labels (P,), test_features (N, d), test_labels (N,), angle_to_direction (K,)
    in degrees (class mean to its direction), directions (K, d), vertices (V, d) (a polytope's
    spare vertices too), centers (K, d) for Center Loss."""

    settings: Settings
    metrics: dict[str, float]
    history: History  # per-epoch rows (loss, NC measures of the probe) and probe snapshots
    probe_labels: torch.Tensor
    test_features: torch.Tensor
    test_labels: torch.Tensor
    angle_to_direction: torch.Tensor
    directions: torch.Tensor
    vertices: torch.Tensor
    train_seconds: float
    centers: torch.Tensor | None
    center_fit: rp.CenterFit | None
    state_dict: dict[str, torch.Tensor]

    def model(self) -> Network:
        """The trained network, rebuilt (eval mode, CPU)."""
        model = build_model(self.settings)
        model.load_state_dict(self.state_dict)
        return model.eval()


def build_model(settings: Settings) -> Network:
    """The network; its head is built first, so its initialisation draws from the seed first."""
    margin = settings.margin_fraction if settings.margin else None
    head = rp.classifier(settings.head, settings.num_classes, settings.dim,
                         margin_fraction=margin, scale=settings.scale)
    cifar = settings.dataset.startswith("cifar")
    return build_network(settings.arch, 3 if cifar else 1, settings.num_classes, settings.dim,
                         head=head, image_size=32 if cifar else 28, **settings.backbone)


def load_data(settings: Settings) -> tuple[ArrayDataset, ArrayDataset, ArrayDataset]:
    """(train, test, probe) of the run's classes; probe = a seeded per-class subset of train."""
    train = load_memoised(settings.dataset, "train").subset_classes(settings.classes)
    test = load_memoised(settings.dataset, "test").subset_classes(settings.classes)
    if settings.train_per_class:
        train = train.k_per_class(settings.train_per_class, seed=settings.seed)
    if settings.test_per_class:
        test = test.k_per_class(settings.test_per_class, seed=settings.seed)
    probe = train.k_per_class(min(settings.probe_per_class, int(train.class_counts().min())),
                              seed=settings.seed + 1)
    return train, test, probe


def make_training(settings: Settings, model: Network, device: torch.device
                  ) -> tuple[list[dict[str, Any]], rp.CenterLoss | None]:
    """(param_groups, Center Loss or None on `device`): `train`'s and `labkit train`'s."""
    neck = [p for p in model.neck.parameters() if p.requires_grad]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("neck.")]
    # the feature layer's own decay bounds ||f||; a strong one (20) cost accuracy in a trial
    groups = [{"params": rest}, {"params": neck, "weight_decay": settings.neck_weight_decay}]
    center = None
    if settings.head == "center":
        center = rp.CenterLoss(settings.num_classes, settings.dim, settings.lam, settings.alpha)
        center.to(device)
    return groups, center


def evaluate(settings: Settings, model: Network, center: rp.CenterLoss | None, history: History,
             test: ArrayDataset, probe: ArrayDataset, device: torch.device) -> Result:
    """The run's `Result` after its training (`train`'s and `labkit train`'s)."""
    features = embed(model, test.images)
    logits = model.head(features.to(device)).detach().float().cpu()
    directions = rp.class_directions(model.head)
    counts = rp.parameter_counts(model.head)
    extra = rp.parameter_counts(center)["trainable"] if center is not None else 0
    centers = center.centers.detach().float().cpu() if center is not None else None
    metrics = {"accuracy": accuracy(logits, test.labels),
               **geometry_summary(features, test.labels, directions),
               **rp.neural_collapse(features, test.labels, directions, logits.argmax(1)),
               "head_trainable": counts["trainable"] + extra, "head_fixed": counts["fixed"],
               "total_trainable": rp.parameter_counts(model)["trainable"] + extra}
    vertices = model.head.weight.detach().float().cpu() if settings.head in POLYTOPES else directions
    return Result(
        settings, metrics, history, probe.labels.cpu(), features, test.labels.cpu(),
        angle_to_direction=alignment_to_targets(features, test.labels, directions),
        directions=directions, vertices=vertices, centers=centers,
        train_seconds=sum(row["time"] for row in history.epochs),
        center_fit=rp.center_fit(features, test.labels, centers) if centers is not None else None,
        state_dict={k: v.cpu() for k, v in model.state_dict().items()})


class RePoNetExperiment(experiment.Experiment):
    """Fixed heads against learned ones; a run per (head, classes, d, margin, seed)."""

    cache_name = "reponet"
    settings_type = Settings
    group_by = ("variant", "num_classes", "dim")
    metrics = tuple(column[0] for column in COLUMNS)
    comparisons = tuple(Comparison(f"{v} vs learned", "variant", v, "learned", "accuracy") for v in
                        (*(p + m for p in (*COMPARED, "polygon") for m in ("", "+margin")),
                         "hadamard", "center"))

    def grids(self, num_classes: int = 10) -> list[dict[str, tuple]]:
        """The comparison's products in the notebook's order: per compared polytope, a learned
        head at its d for K classes, then the polytope plain and with the margin."""
        grids: list[dict[str, tuple]] = []
        for kind in COMPARED:
            grids += [{"head": ("learned",), "feat_dim": (rp.polytope_dim(kind, num_classes),),
                       "margin": (False,)},
                      {"head": (kind,), "feat_dim": (None,), "margin": (False, True)}]
        return grids

    def sweep(self, settings: Settings | None = None, *, progress: bool = True,
              **axes: Sequence[Any]) -> list[Result]:
        """`run` over the product of `axes` on top of `settings` (default: the profile's);
        without axes, the comparison (the products of `grids`, one after the other)."""
        if axes:
            return super().sweep(settings, progress=progress, **axes)
        base = settings if settings is not None else Settings.for_profile()
        sweep = super().sweep  # zero-argument super() fails inside a comprehension
        return [r for grid in self.grids(base.num_classes) for r in sweep(base, progress=progress,
                                                                          **grid)]

    def table(self, summary: Summary) -> str:
        """One line per (variant, K, d): seeds, accuracy %, angles (degrees), NC1/NC2, counts."""
        lines = [[*key, next(iter(stats.values())).n,
                  *[stats[m].format(scale, digits) if m in stats else ""
                    for m, _, scale, digits in COLUMNS]]
                 for key, stats in summary.stats.items()]
        return text_table(["run", "K", "d", "seeds", *[c[1] for c in COLUMNS]], lines)

    def train(self, settings: Settings, progress: bool = False, *, callbacks: Sequence[Any] = (),
              device: torch.device | str | None = None) -> Result:
        """One run now (no cache); `callbacks` go to `fit` (the train panel's live view)."""
        device = torch.device(device) if device is not None else config.get_device()
        train_set, test, probe = load_data(settings)
        config.seed_everything(settings.seed)
        model = build_model(settings)
        groups, center = make_training(settings, model, device)
        side_optimizers = [center.optimizer()] if center is not None else []
        tracker = rp.CollapseTracker(model, probe.labels)

        def loss_fn(net: Network, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return rp.embedding_loss(net.head, net.neck(net.backbone(images)), labels, center)

        history = fit(model, loss_fn, train_set, epochs=settings.epochs,
                      batch_size=settings.batch_size, optimizer=settings.optimizer,
                      lr=settings.lr, momentum=0.9, weight_decay=settings.weight_decay,
                      schedule="cosine", param_groups=groups, device=device, probe=probe.images,
                      callbacks=[tracker, *callbacks], seed=settings.seed, progress=progress,
                      side_optimizers=side_optimizers)
        return evaluate(settings, model, center, history, test, probe, device)


EXPERIMENT = RePoNetExperiment()
run, sweep, summary, table, claims = experiment.bind(EXPERIMENT)


# ----------------------------------------------------------------------------- the bound check

def acceptance(results: Sequence[Result], max_gap: float = 1.0, max_angle: float = 10.0,
               margin: bool = False) -> rp.Acceptance:
    """Every fixed polytope within `max_gap` accuracy points of the learned head at the same d
    and seed, and its test class means within `max_angle` degrees of their vertices; for the
    plain polytopes, or with `margin` the margin variants. A bound, not a paired comparison."""
    def key(r: Result) -> tuple[int, int, int]:  # the learned rival: same K, d and seed
        return r.settings.num_classes, r.settings.dim, r.settings.seed
    learned = {key(r): r for r in results if r.settings.head == "learned"}
    rows = []
    for r in (r for r in results if r.settings.head in POLYTOPES and r.settings.margin == margin):
        s, rival = r.settings, learned.get(key(r))
        if rival is None:
            raise ValueError(f"no learned run with {s.num_classes} classes, feat_dim={s.dim} and "
                             f"seed {s.seed} to compare {s.label} with")
        gap = 100 * (rival.metrics["accuracy"] - r.metrics["accuracy"])
        angle = float(r.angle_to_direction.max())
        rows.append(rp.AcceptanceRow(s.label, s.seed, 100 * r.metrics["accuracy"],
                                     100 * rival.metrics["accuracy"], gap, angle,
                                     r.metrics["spread_deg"], gap <= max_gap and angle <= max_angle))
    if not rows:
        raise ValueError(f"no {'margin' if margin else 'plain'} fixed-polytope runs among the results")
    return rp.Acceptance(all(row.passed for row in rows), tuple(rows), margin, max_gap, max_angle)
