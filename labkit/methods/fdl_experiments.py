"""FDL experiments: classical vs FDL ensembles trained on k images per class.

A run trains one ensemble's members jointly for a fixed number of steps, scores the members and
the combiners on a fixed test set, measures how much the members' attention overlaps, then
trains the fusion head. The runner follows `labkit.core.experiment`: the few-shot sweep (method
x k x seed) is `sweep()`, its claims FDL against classical per k, paired by seed. The protocol,
the defaults per profile and the deviations from the authors' code: docs/methods/fdl.md.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from labkit.core import config, experiment
from labkit.core.data import ArrayDataset, load_memoised
from labkit.core.experiment import Comparison, Summary
from labkit.methods import fdl

COMBINERS = ("mean_member", "soft_vote", "hard_vote", "fusion")
GAINS = tuple(f"{c}_gain" for c in COMBINERS[1:])  # combiner - mean member, per run
OVERLAPS = ("iou_map", "iou_cam", "empty_cam")
MASKED = ("cam_inside", "cam_inside_chance", "cam_pointing")  # datasets with object masks
METRICS = (*COMBINERS, *OVERLAPS, *GAINS, *MASKED)
METHODS = ("classical", "fdl")
KS = (3, 5, 10, 20, 50, 100)  # the paper's images per class
CIFAR_WIDTHS = (64, 128, 256)  # the code's VGG: a 4x4 FDL map on 32x32 images
TIE = 1e-6  # accuracies are float32 counts over the test set: means this close are a tie


@dataclass(frozen=True)
class Settings(experiment.Settings):
    """One run. Defaults: the lab profile (mnist5k, five VGG-style members of widths 8, 16, whose
    FDL map is 7x7 on 28x28 digits, 100 Adam steps of batches of 10); `PROFILES` holds what quick
    and full change. The classical ensemble has no FDL weights: use_fdl=False sets both to 0 and
    zero weights are the classical ensemble, so both spellings are one run (one cache entry)."""

    k: int = 10  # training images per class
    seed: int = 0
    use_fdl: bool = True
    lambda_cos: float = 1.0  # (1, 10): the code's weights for VGG on CIFAR-10
    lambda_euc: float = 10.0
    dataset: str = "mnist5k"
    members: int = 5
    widths: tuple[int, ...] = (8, 16)
    # the authors' rates after blocks 1, 2, 3; kept: one per block (two blocks take the first two)
    conv_dropout: tuple[float, ...] = (0.2, 0.3, 0.4)
    init: str = "he_uniform"  # or "default" (PyTorch's)
    feat_dim: int = 128
    steps: int = 100
    batch_size: int = 10  # the code's
    lr: float = 1e-3
    fusion_steps: int = 40
    finetune_steps: int = 10
    finetune_lr: float = 1e-5
    test_size: int | None = 500  # a fixed stratified subset; None: the whole test split
    cam_size: int = 50  # test images for the Grad-CAM measures

    PROFILES: ClassVar = {
        "quick": dict(k=3, members=3, widths=(4, 8), feat_dim=16, steps=60, batch_size=16,
                      fusion_steps=20, finetune_steps=5, test_size=100, cam_size=32),
        "full": dict(widths=(32, 64), steps=3000, fusion_steps=1000, finetune_steps=400,
                     test_size=None, cam_size=500),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        on = bool(self.use_fdl) and (self.lambda_cos, self.lambda_euc) != (0, 0)
        canonical = dict(use_fdl=on, lambda_cos=float(self.lambda_cos) if on else 0.0,
                         lambda_euc=float(self.lambda_euc) if on else 0.0,
                         widths=tuple(int(w) for w in self.widths),
                         conv_dropout=tuple(float(r) for r in self.conv_dropout[:len(self.widths)]))
        for name, value in canonical.items():
            object.__setattr__(self, name, value)

    def check(self) -> None:
        fdl._check_weight("lambda_cos", self.lambda_cos)
        fdl._check_weight("lambda_euc", self.lambda_euc)
        if self.init not in fdl.INITS:
            raise ValueError(f"unknown init {self.init!r}; use one of {fdl.INITS}")
        if self.members < 2 or min(self.k, self.batch_size, self.cam_size) < 1:
            raise ValueError(f"need members >= 2 and k, batch_size, cam_size >= 1; got "
                             f"{self.members}, {self.k}, {self.batch_size}, {self.cam_size}")
        if not self.widths or 0 < len(self.conv_dropout) < len(self.widths):
            raise ValueError(f"widths {self.widths} need at least one block and conv_dropout "
                             f"{self.conv_dropout} none or one rate per block")

    @property
    def method(self) -> str:  # "classical": the cross-entropies alone
        return "fdl" if self.use_fdl else "classical"

    @property
    def label(self) -> str:  # "classical" or "FDL (lambda_cos, lambda_euc)"
        return f"FDL ({self.lambda_cos:g}, {self.lambda_euc:g})" if self.use_fdl else "classical"


@dataclass
class Result(experiment.Result):
    """A trained run: test metrics (`METRICS`: accuracies of each member "member_m", of their
    mean and the combiners; the overlap measures), the loss parts per epoch, and the members'
    weights as trained (before the fusion head's fine-tuning changed them)."""

    settings: Settings
    metrics: dict[str, float]
    log: list[dict[str, float]]
    image_shape: tuple[int, int, int]
    num_classes: int
    state_dict: dict[str, torch.Tensor]

    def ensemble(self) -> fdl.FDLEnsemble:
        """The trained members, rebuilt (eval mode, CPU)."""
        ensemble = build_ensemble(self.settings, self.image_shape, self.num_classes)
        ensemble.load_state_dict(self.state_dict)
        return ensemble.eval()


def load_split(settings: Settings) -> tuple[ArrayDataset, ArrayDataset]:
    """(k images per class drawn with the run's seed, the test set): the test set is the same
    for every run, a fixed stratified subset when `test_size` is set."""
    test = load_memoised(settings.dataset, "test")
    if settings.test_size is not None and settings.test_size < len(test):
        test = test.k_per_class(max(1, settings.test_size // test.num_classes), seed=0)
    return load_memoised(settings.dataset, "train").k_per_class(settings.k, settings.seed), test


def build_ensemble(settings: Settings, image_shape: Sequence[int], num_classes: int
                   ) -> fdl.FDLEnsemble:
    """The untrained ensemble for (C, H, W) images of `num_classes` classes (on the CPU)."""
    channels, size, _ = image_shape
    factory = fdl.member_factory(settings.widths, num_classes, channels, size, settings.feat_dim,
                                 settings.conv_dropout, settings.init)
    return fdl.FDLEnsemble(fdl.make_members(factory, settings.members, seed=settings.seed))


def train_ensemble(settings: Settings, train: ArrayDataset, device: torch.device, *,
                   progress: bool = False) -> tuple[fdl.FDLEnsemble, list[dict[str, float]]]:
    """The settings' ensemble trained jointly (`fdl.train_jointly`), and its loss parts per
    epoch. The classical ensemble is the same call without the FDL term."""
    ensemble = build_ensemble(settings, train.image_shape, train.num_classes)
    log = fdl.train_jointly(ensemble, train, settings.lambda_cos, settings.lambda_euc,
                            use_fdl=settings.use_fdl, steps=settings.steps,
                            batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed,
                            device=device, progress=progress)
    return ensemble, log


def evaluate(settings: Settings, ensemble: fdl.FDLEnsemble, train: ArrayDataset,
             test: ArrayDataset, log: list[dict[str, float]], train_time: float,
             device: torch.device) -> Result:
    """The trained ensemble's `Result`, then its fusion head's (trained from the generators'
    state right after the members, in `run` as in `labkit train`)."""
    every = slice(None, None, max(1, len(test) // settings.cam_size))  # cam_size images
    metrics = fdl.test_pass(ensemble, test.images, test.labels)
    cams = fdl.member_gradcam(ensemble, test.images[every][:settings.cam_size])
    masks = None if test.masks is None else test.masks[every][:settings.cam_size]
    metrics.update(fdl.cam_metrics(cams, masks))
    # the members' weights as trained; fine-tuning the fusion model below changes them
    state = {key: value.detach().cpu().clone() for key, value in ensemble.state_dict().items()}
    fusion = fdl.train_fusion(ensemble, train, steps=settings.fusion_steps,
                              finetune_steps=settings.finetune_steps,
                              finetune_lr=settings.finetune_lr, batch_size=settings.batch_size,
                              seed=settings.seed, device=device)
    metrics["fusion"] = fdl.accuracy(fusion, test.images, test.labels)
    metrics["train_time"] = train_time
    return Result(settings, metrics, log, tuple(train.image_shape), train.num_classes, state)


class FDLExperiment(experiment.Experiment):
    """Classical vs FDL ensembles per k, over seeds."""

    cache_name = "fdl_fewshot"
    settings_type = Settings
    group_by = ("method", "k")
    metrics = METRICS
    comparisons = (*(Comparison(f"fdl > classical ({c})", "method", "fdl", "classical", c)
                     for c in COMBINERS),
                   # lower is less overlap: the gain is classical's IoU minus FDL's
                   *(Comparison(f"fdl overlaps less ({m})", "method", "classical", "fdl", m)
                     for m in OVERLAPS[:2]))
    table_scale = 1.0  # accuracies and IoUs as fractions, as the notebook's prose quotes them
    table_digits = 3

    def grid(self) -> dict[str, tuple]:
        return {"k": config.pick(quick=(3, 10), lab=KS, full=KS),
                "seed": config.pick(quick=(0,), lab=(0, 1), full=(0, 1, 2, 3, 4)),
                "use_fdl": (False, True)}

    def train(self, settings: Settings, progress: bool) -> Result:
        device = config.get_device()
        with config.cpu_threads(config.small_cpu_thread_cap(device)):
            train, test = load_split(settings)
            config.seed_everything(settings.seed)
            started = time.perf_counter()
            ensemble, log = train_ensemble(settings, train, device, progress=progress)
            return evaluate(settings, ensemble, train, test, log, time.perf_counter() - started,
                            device)

    def row(self, result: Result) -> dict:
        """The run's row, with what each combiner buys over the mean member (`GAINS`)."""
        gains = {f"{c}_gain": result.metrics[c] - result.metrics["mean_member"]
                 for c in COMBINERS[1:]}
        return {**super().row(result), **gains}


EXPERIMENT = FDLExperiment()
run, sweep, summary, table, claims = experiment.bind(EXPERIMENT)


def regularization_ablation(settings: Settings | None = None, *, progress: bool = True
                            ) -> dict[str, list[Result]]:
    """{"authors": runs with the authors' member regularisation, "none": the same without it
    (no conv dropout, PyTorch's init: the lab's members before they followed the code)},
    classical and FDL at a few k over the profile's seeds; the "authors" runs are the sweep's."""
    base = settings if settings is not None else Settings.for_profile()
    grid = EXPERIMENT.grid()
    axes = {"k": config.pick(quick=grid["k"][:1], lab=(5, 20), full=(5, 20, 100)),
            "seed": grid["seed"], "use_fdl": grid["use_fdl"]}
    return {"authors": sweep(base, progress=progress, **axes),
            "none": sweep(base.replace(conv_dropout=(), init="default"), progress=progress,
                          **axes)}


def extra_datasets() -> tuple[Settings, ...]:
    """The sweeps beyond mnist5k: CIFAR-10 with the code's VGG widths (4x4 FDL map) in `full`
    only. CIFAR-10 must be downloaded first (`labkit download cifar10`)."""
    cifar = Settings.for_profile(dataset="cifar10", widths=CIFAR_WIDTHS)
    return config.pick(quick=(), lab=(), full=(cifar,))


def lambda_grid(settings: Settings) -> list[Settings]:
    """`settings` with its FDL weights scaled together by the profile's s (s = 0: classical),
    for the λ slider."""
    if not settings.use_fdl:
        raise ValueError("lambda_grid scales the FDL weights of an FDL run; got the classical one")
    scales = config.pick(quick=(0.0, 1.0), lab=(0.0, 0.1, 1.0, 3.0),
                         full=(0.0, 0.01, 0.1, 0.3, 1.0, 3.0))
    return [settings.replace(lambda_cos=settings.lambda_cos * s,
                             lambda_euc=settings.lambda_euc * s) for s in scales]


@dataclass
class CamRecord:
    """One run's attention on a few test images: Grad-CAMs (M, B, H, W) in [0, 1] of every
    member for its own prediction, the predictions (M, B) and the channel-mean FDL maps
    (M, B, h, w), with the run's settings and metrics."""

    settings: Settings
    metrics: dict[str, float]
    cams: torch.Tensor
    preds: torch.Tensor
    maps: torch.Tensor


def cam_records(runs: Sequence[Settings], images: torch.Tensor) -> list[CamRecord]:
    """A `CamRecord` of (B, C, H, W) `images` for each run's settings (`run`, cached)."""
    return [CamRecord(r.settings, r.metrics, *fdl.member_attention(r.ensemble(), images))
            for r in map(run, runs)]


@dataclass(frozen=True)
class Overlap:
    """A sweep's answer to "do FDL members overlap less, and are they more accurate?"."""

    means: dict[str, dict[str, float]]  # iou_map|iou_cam|empty_cam: {method: mean over k}
    less_every_k: dict[str, bool]  # iou_map|iou_cam: FDL's mean below classical's at every k
    fdl_wins_at: dict[str, list[int]]  # combiner: the k where FDL's mean beats classical's


def overlap(summary: Summary) -> Overlap:
    """`Overlap` of a sweep's summary: `table`'s means over seeds, averaged over k; a difference
    within `TIE` is no win."""
    ks = sorted({k for _, k in summary.stats})

    def mean(method: str, k: int, metric: str) -> float:
        return summary.stats[(method, k)][metric].mean

    means = {m: {method: sum(mean(method, k, m) for k in ks) / len(ks) for method in METHODS}
             for m in OVERLAPS}
    less = {m: all(mean("fdl", k, m) < mean("classical", k, m) - TIE for k in ks)
            for m in OVERLAPS[:2]}
    wins = {c: [k for k in ks if mean("fdl", k, c) > mean("classical", k, c) + TIE]
            for c in COMBINERS}
    return Overlap(means, less, wins)

