"""Experiment runners for notebook 02: the few-shot sweep, the lambda sweep and CAM records.

Every run (one dataset, k images per class, seed, lambda pair) trains a classical or an FDL
ensemble jointly, fits the feature-fusion head, and records test accuracies of every combiner
plus how much the members' attention overlaps. Runs are cached one by one with
`labkit.core.cache.cached`, so re-opening the notebook re-draws without retraining and an
interrupted sweep resumes where it stopped.

Protocol notes (the main differences from the authors' code; docs/methods/fdl.md lists all):
* no augmentation and no validation-based checkpoint selection (the code keeps the epoch with
  the best validation accuracy on 2,000 labelled images, which flatters the few-shot setting);
  every run trains a fixed number of optimizer steps, the same for both ensembles;
* the fusion head trains with frozen members, then fine-tunes everything at lr 1e-5, both for a
  fixed number of steps on the same k-shot training set.
The members are the code's: dropout 0.2 / 0.3 / 0.4 after the pooling of blocks 1 / 2 / 3 (the
last block's after the FDL map) and He-uniform init; `regularization_ablation` trains them
without both, as the lab did before, to show what the authors' regularisation does few-shot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from labkit.core import config
from labkit.core.cache import cached
from labkit.core.data import ArrayDataset, load_memoised
from labkit.core.models import build_network, eval_mode, he_uniform_
from labkit.core.train import fit
from labkit.methods import fdl

COMBINERS = ("mean_member", "soft_vote", "hard_vote", "fusion")
METHODS = ("classical", "fdl")


def sweep_settings(dataset: str = "mnist5k") -> dict[str, Any]:
    """The profile's sweep knobs (quick: seconds, lab: a few CPU minutes, full: paper-like)."""
    cifar = dataset.startswith("cifar")
    return {
        "dataset": dataset,
        "ks": config.pick(quick=(3, 10), lab=(3, 5, 10, 20, 50, 100), full=(3, 5, 10, 20, 50, 100)),
        "seeds": config.pick(quick=(0,), lab=(0, 1), full=(0, 1, 2, 3, 4)),
        "members": config.pick(quick=3, lab=5, full=5),
        # VGG-style members; (8, 16) with two pools keeps a 7x7 FDL map on 28x28 MNIST.
        "widths": (64, 128, 256) if cifar else config.pick(quick=(4, 8), lab=(8, 16), full=(32, 64)),
        # the authors' members: these rates after blocks 1, 2, 3 (as many as there are blocks)
        "conv_dropout": (0.2, 0.3, 0.4),
        "init": "he_uniform",
        "feat_dim": config.pick(quick=16, lab=128, full=128),
        "steps": config.pick(quick=60, lab=100, full=3000),
        "batch_size": config.pick(quick=16, lab=10, full=10),  # the code's batch size is 10
        "lr": 1e-3,
        "lambda_cos": 1.0,
        "lambda_euc": 10.0,
        "fusion_steps": config.pick(quick=20, lab=40, full=1000),
        "finetune_steps": config.pick(quick=5, lab=10, full=400),
        "finetune_lr": 1e-5,
        "test_size": config.pick(quick=100, lab=500, full=None),  # None: the whole test split
        "cam_size": config.pick(quick=32, lab=50, full=500),  # test images for the Grad-CAM IoU
    }


def extra_datasets() -> tuple[str, ...]:
    """Datasets swept in addition to mnist5k: CIFAR-10 (VGG-style, 4x4 FDL map) in `full` only.
    CIFAR-10 must be downloaded first (`load_dataset("cifar10", download=True)`)."""
    return config.pick(quick=(), lab=(), full=("cifar10",))


INITS = ("he_uniform", "default")


def member_factory(widths: Sequence[int], num_classes: int, in_channels: int, image_size: int,
                   feat_dim: int, conv_dropout: Sequence[float] = (),
                   init: str = "default") -> Callable[[], nn.Module]:
    """A VGG-style member (`build_network("vgg")`): its post-pool map is what FDL compares.

    As the paper's Keras VGG: after block i's pooling, Dropout conv_dropout[i] (the last block's
    after the FDL map, so FDL and Grad-CAM read the map undropped); head Flatten -> Dense
    `feat_dim` -> BN -> ReLU -> Dropout 0.5 -> Dense K (with bias) -> softmax. init
    "he_uniform" (the code's) or "default" (PyTorch's).
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; use one of {INITS}")
    rates = tuple(conv_dropout)[:len(widths)]

    def build() -> nn.Module:
        net = build_network("vgg", in_channels, num_classes, feat_dim, neck="flatten_mlp",
                            head=nn.Linear(feat_dim, num_classes), image_size=image_size,
                            widths=tuple(widths), dropout=rates[:-1],
                            neck_options={"map_dropout": rates[-1] if rates else 0.0})
        return he_uniform_(net) if init == "he_uniform" else net
    return build


def load_split(dataset: str, test_size: int | None, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """(train pool, test set); the test set is a fixed stratified subset when `test_size` is set."""
    train = load_memoised(dataset, "train")
    test = load_memoised(dataset, "test")
    if test_size is not None and test_size < len(test):
        per_class = max(1, test_size // test.num_classes)
        test = test.k_per_class(per_class, seed=seed)
    return train, test


def _epochs_for(steps: int, n: int, batch_size: int) -> tuple[int, int]:
    batch = min(batch_size, n)
    per_epoch = max(1, n // batch)
    return max(1, math.ceil(steps / per_epoch)), batch


def build_ensemble(train: ArrayDataset, *, members: int, widths: Sequence[int], feat_dim: int,
                   seed: int, conv_dropout: Sequence[float] = (), init: str = "default"
                   ) -> fdl.FDLEnsemble:
    """The untrained ensemble of M members for `train`'s images and classes (on the CPU)."""
    _, channels, size, _ = train.images.shape
    factory = member_factory(widths, train.num_classes, channels, size, feat_dim, conv_dropout, init)
    return fdl.FDLEnsemble(fdl.make_members(factory, members, seed=seed))


def train_ensemble(train: ArrayDataset, *, use_fdl: bool, lambda_cos: float, lambda_euc: float,
                   members: int, widths: Sequence[int], feat_dim: int, steps: int, batch_size: int,
                   lr: float, seed: int, conv_dropout: Sequence[float] = (), init: str = "default",
                   device: torch.device | None = None
                   ) -> tuple[fdl.FDLEnsemble, list[dict[str, float]]]:
    """Joint training (one Adam, constant LR) of M members; returns the ensemble and a log of the
    loss parts per epoch. The classical ensemble is the same call with use_fdl=False."""
    ensemble = build_ensemble(train, members=members, widths=widths, feat_dim=feat_dim, seed=seed,
                              conv_dropout=conv_dropout, init=init)
    loss_fn = fdl.JointLoss(lambda_cos, lambda_euc, use_fdl=use_fdl)
    log: list[dict[str, float]] = []

    class _Log:
        def on_epoch_end(self, state) -> None:
            log.append({"epoch": state.epoch, **loss_fn.last})

    epochs, batch = _epochs_for(steps, len(train), batch_size)
    fit(ensemble, loss_fn, train, epochs=epochs, batch_size=batch, optimizer="adam", lr=lr,
        device=device, callbacks=[_Log()], seed=seed, progress=False)
    return ensemble, log


def train_fusion(ensemble: fdl.FDLEnsemble, train: ArrayDataset, *, steps: int, finetune_steps: int,
                 lr: float = 1e-3, finetune_lr: float = 1e-5, batch_size: int = 32, seed: int = 0,
                 device: torch.device | None = None) -> fdl.FusionModel:
    """Feature-fusion head: `steps` with frozen members, then `finetune_steps` on everything.

    Fine-tuning changes the members' weights in place; callers that still need the original
    members should evaluate them first (as `run_fewshot` does).
    """
    device = device or next(ensemble.parameters()).device
    model = fdl.FusionModel(ensemble, train.num_classes, tuple(train.images.shape[1:]))
    model.to(device)

    def ce(m: fdl.FusionModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(m(x), y)

    if steps > 0:
        model.freeze_members = True
        epochs, batch = _epochs_for(steps, len(train), batch_size)
        fit(model, ce, train, epochs=epochs, batch_size=batch, optimizer="adam", lr=lr,
            param_groups=[{"params": list(model.head.parameters())}], device=device, seed=seed,
            progress=False)
    if finetune_steps > 0:
        model.freeze_members = False
        epochs, batch = _epochs_for(finetune_steps, len(train), batch_size)
        fit(model, ce, train, epochs=epochs, batch_size=batch, optimizer="adam", lr=finetune_lr,
            device=device, seed=seed + 1, progress=False)
    model.freeze_members = True
    model.eval()
    return model


@torch.no_grad()
def _test_pass(ensemble: fdl.FDLEnsemble, images: torch.Tensor, labels: torch.Tensor,
               batch_size: int = 500) -> dict[str, float]:
    """Accuracies of the voting combiners and the map overlap, from one forward pass."""
    device = next(ensemble.parameters()).device
    with eval_mode(ensemble):
        logits, descs, s_cos, s_euc = [], [], [], []
        for start in range(0, images.shape[0], batch_size):
            outs = ensemble.member_outputs(images[start:start + batch_size].to(device))
            maps = [o.feature_map for o in outs]
            logits.append(torch.stack([o.logits for o in outs]).cpu())
            descs.append(torch.stack([fdl.fdl_descriptor(f, mask=False) for f in maps]).cpu())
            sims = fdl.fdl_similarity_terms(maps)
            s_cos.append(sims[0].cpu())
            s_euc.append(sims[1].cpu())
    member_logits, labels = torch.cat(logits, dim=1), labels.cpu()
    correct = (member_logits.argmax(-1) == labels).float().mean(dim=1)
    out = {f"member_{m}": float(a) for m, a in enumerate(correct)}
    out.update(mean_member=float(correct.mean()),
               soft_vote=float((fdl.soft_vote(member_logits).argmax(-1) == labels).float().mean()),
               hard_vote=float((fdl.hard_vote(member_logits) == labels).float().mean()),
               iou_map=float(fdl.attention_iou(torch.cat(descs, dim=1)).nanmean()),
               s_cos=float(torch.cat(s_cos).mean()), s_euc=float(torch.cat(s_euc).mean()))
    return out


def evaluate_run(ensemble: fdl.FDLEnsemble, test: ArrayDataset, cam_images: torch.Tensor
                 ) -> dict[str, float]:
    """Test metrics of one trained ensemble.

    member_m, mean_member, soft_vote, hard_vote: accuracies. How much members look at the same
    place: iou_map, the mean pairwise IoU of the above-mean regions of the channel-mean maps (what
    FDL sees); iou_cam, the same for Grad-CAMs of each member's predicted class on `cam_images`;
    s_cos, s_euc: the unweighted FDL similarity sums over member pairs.
    """
    out = _test_pass(ensemble, test.images, test.labels)
    cams = fdl.member_gradcam(ensemble, cam_images)
    out["iou_cam"] = float(fdl.attention_iou(cams).nanmean())
    out["empty_cam"] = fdl.empty_region_share(cams)
    return out


def run_config(settings: dict[str, Any], *, k: int, seed: int, lambda_cos: float | None = None,
               lambda_euc: float | None = None, use_fdl: bool = True) -> dict[str, Any]:
    """The cache key of one run. A zero-weight FDL run *is* the classical run, so it maps there."""
    lc = settings["lambda_cos"] if lambda_cos is None else float(lambda_cos)
    le = settings["lambda_euc"] if lambda_euc is None else float(lambda_euc)
    if not use_fdl or (lc == 0 and le == 0):
        use_fdl, lc, le = False, 0.0, 0.0
    keys = ("dataset", "members", "widths", "conv_dropout", "init", "feat_dim", "steps",
            "batch_size", "lr", "fusion_steps", "finetune_steps", "finetune_lr", "test_size",
            "cam_size")
    cfg = {key: settings[key] for key in keys}
    cfg["widths"] = list(cfg["widths"])
    cfg["conv_dropout"] = [float(rate) for rate in cfg["conv_dropout"]][:len(cfg["widths"])]
    cfg.update(k=int(k), seed=int(seed), use_fdl=use_fdl, lambda_cos=lc, lambda_euc=le)
    return cfg


def _run(cfg: dict[str, Any]) -> dict[str, Any]:
    device = config.get_device()
    with config.cpu_threads(config.small_cpu_thread_cap(device)):
        return _run_on(cfg, device)


def _run_on(cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    train, test = run_data(cfg)
    config.seed_everything(cfg["seed"])
    started = time.perf_counter()
    ensemble, log = train_ensemble(
        train, use_fdl=cfg["use_fdl"], lambda_cos=cfg["lambda_cos"], lambda_euc=cfg["lambda_euc"],
        members=cfg["members"], widths=cfg["widths"], feat_dim=cfg["feat_dim"], steps=cfg["steps"],
        batch_size=cfg["batch_size"], lr=cfg["lr"], seed=cfg["seed"],
        conv_dropout=cfg["conv_dropout"], init=cfg["init"], device=device)
    return finish_run(cfg, ensemble, train, test, log, time.perf_counter() - started, device)


def run_data(cfg: dict[str, Any]) -> tuple[ArrayDataset, ArrayDataset]:
    """(k-shot training set, test set) of one run's config."""
    train_pool, test = load_split(cfg["dataset"], cfg["test_size"])
    return train_pool.k_per_class(cfg["k"], seed=cfg["seed"]), test


def finish_run(cfg: dict[str, Any], ensemble: fdl.FDLEnsemble, train: ArrayDataset,
               test: ArrayDataset, log: list[dict[str, float]], train_time: float,
               device: torch.device) -> dict[str, Any]:
    """A trained ensemble's cached result: its test metrics, then the fusion head's (trained
    here, from the generators' current state, as `_run_on` does right after the ensemble)."""
    cam_images = test.images[:: max(1, len(test) // cfg["cam_size"])][: cfg["cam_size"]]
    metrics = evaluate_run(ensemble, test, cam_images)
    # The members' weights as trained; fine-tuning the fusion model below changes them.
    state = {key: value.detach().cpu().clone() for key, value in ensemble.state_dict().items()}
    fusion = train_fusion(ensemble, train, steps=cfg["fusion_steps"],
                          finetune_steps=cfg["finetune_steps"], finetune_lr=cfg["finetune_lr"],
                          batch_size=cfg["batch_size"], seed=cfg["seed"], device=device)
    with torch.no_grad():
        fused = torch.cat([fusion(test.images[i:i + 500].to(device)).argmax(-1).cpu()
                           for i in range(0, len(test), 500)])
    metrics["fusion"] = float((fused == test.labels.cpu()).float().mean())
    metrics["train_time"] = train_time
    return {"config": cfg, "metrics": metrics, "log": log, "state_dict": state}


def run_fewshot(settings: dict[str, Any], *, k: int, seed: int, use_fdl: bool = True,
                lambda_cos: float | None = None, lambda_euc: float | None = None) -> dict[str, Any]:
    """One cached run: {"config", "metrics" (accuracies + overlap), "log", "state_dict"}."""
    cfg = run_config(settings, k=k, seed=seed, lambda_cos=lambda_cos, lambda_euc=lambda_euc,
                     use_fdl=use_fdl)
    return cached("fdl_fewshot", cfg, lambda: _run(cfg))


def fewshot_sweep(settings: dict[str, Any] | None = None, *, progress: bool = True) -> list[dict[str, Any]]:
    """Classical vs FDL ensembles for every k and seed: one row per run (method, k, seed, metrics,
    and `<combiner>_gain` = combiner accuracy - mean member accuracy)."""
    settings = settings or sweep_settings()
    jobs = [(k, seed, method) for k in settings["ks"] for seed in settings["seeds"] for method in METHODS]
    rows = []
    for k, seed, method in config.progress_bar(jobs, progress, desc="FDL sweep runs"):
        result = run_fewshot(settings, k=k, seed=seed, use_fdl=method == "fdl")
        metrics = result["metrics"]
        # what combining buys over a single member: the diversity dividend the paper is after
        gain = {f"{c}_gain": metrics[c] - metrics["mean_member"] for c in COMBINERS[1:]}
        rows.append({"method": method, "k": k, "seed": seed, **metrics, **gain})
    return rows


def regularization_ablation(settings: dict[str, Any] | None = None, *,
                            progress: bool = True) -> list[dict[str, Any]]:
    """The authors' member regularisation (conv dropout + He-uniform) against none (no conv
    dropout, PyTorch's init), classical and FDL, at a few k: one row per run, with "variant"
    ("authors" or "none") and the run's metrics. The "authors" rows are the sweep's own runs."""
    settings = settings or sweep_settings()
    variants = {"authors": settings, "none": {**settings, "conv_dropout": (), "init": "default"}}
    ks = config.pick(quick=settings["ks"][:1], lab=(5, 20), full=(5, 20, 100))
    jobs = [(name, k, seed, method) for name in variants for k in ks
            for seed in settings["seeds"] for method in METHODS]
    rows = []
    for name, k, seed, method in config.progress_bar(jobs, progress, desc="FDL ablation runs"):
        result = run_fewshot(variants[name], k=k, seed=seed, use_fdl=method == "fdl")
        rows.append({"variant": name, "method": method, "k": k, "seed": seed, **result["metrics"]})
    return rows


def summarize(rows: Sequence[dict[str, Any]], metric: str) -> dict[str, dict[int, tuple[float, float, int]]]:
    """{method: {k: (mean, std over seeds, n)}} of one metric (std is 0 for a single seed)."""
    out: dict[str, dict[int, tuple[float, float, int]]] = {}
    for method in sorted({r["method"] for r in rows}):
        for k in sorted({r["k"] for r in rows if r["method"] == method}):
            values = torch.tensor([float(r[metric]) for r in rows if r["method"] == method and r["k"] == k])
            std = float(values.std()) if len(values) > 1 else 0.0
            out.setdefault(method, {})[k] = (float(values.mean()), std, len(values))
    return out


def overlap_report(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The sweep's answer to "do FDL members overlap less, and are they more accurate?".

    Returns {"iou_map"|"iou_cam"|"empty_cam": {method: mean over k of the per-k means},
    "less_overlap_every_k": {"iou_map": bool, "iou_cam": bool},
    "fdl_wins_at": {combiner: [k where the FDL mean beats the classical mean]}}.
    """
    ks = sorted({r["k"] for r in rows})
    out: dict[str, Any] = {"less_overlap_every_k": {}, "fdl_wins_at": {}}
    for metric in ("iou_map", "iou_cam", "empty_cam"):
        stats = summarize(rows, metric)
        out[metric] = {m: sum(stats[m][k][0] for k in ks) / len(ks) for m in METHODS}
        if metric != "empty_cam":
            out["less_overlap_every_k"][metric] = all(
                stats["fdl"][k][0] < stats["classical"][k][0] for k in ks)
    for combiner in COMBINERS:
        stats = summarize(rows, combiner)
        out["fdl_wins_at"][combiner] = [k for k in ks
                                        if stats["fdl"][k][0] > stats["classical"][k][0]]
    return out


def comparison_table(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = COMBINERS + ("iou_cam",)
                     ) -> str:
    """A plain-text table: per k, classical vs FDL mean +- std for each metric."""
    header = f"{'k':>4} | " + " | ".join(f"{m:>21}" for m in metrics)
    lines = [header, "     | " + " | ".join(f"{'classical':>10} {'FDL':>10}" for _ in metrics)]
    stats = {m: summarize(rows, m) for m in metrics}
    for k in sorted({r["k"] for r in rows}):
        cells = []
        for m in metrics:
            c = stats[m].get("classical", {}).get(k)
            f = stats[m].get("fdl", {}).get(k)
            cells.append(" ".join(f"{v[0]:.3f}±{v[1]:.2f}".rjust(10) if v else " " * 10 for v in (c, f)))
        lines.append(f"{k:>4} | " + " | ".join(cells))
    return "\n".join(lines)


def load_ensemble(result: dict[str, Any]) -> fdl.FDLEnsemble:
    """Rebuild a cached run's ensemble (as trained, before fusion fine-tuning), in eval mode."""
    cfg = result["config"]
    shape = _image_shape(cfg["dataset"])
    num_classes = result["state_dict"]["members.0.head.weight"].shape[0]  # as trained
    factory = member_factory(cfg["widths"], num_classes, shape[0], shape[1], cfg["feat_dim"],
                             cfg["conv_dropout"], cfg["init"])
    ensemble = fdl.FDLEnsemble(fdl.make_members(factory, cfg["members"], seed=cfg["seed"]))
    ensemble.load_state_dict(result["state_dict"])
    return ensemble.eval()


def _image_shape(dataset: str) -> tuple[int, int, int]:
    return {"mnist5k": (1, 28, 28), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28),
            "digits": (1, 8, 8), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}[dataset]


def cam_records(settings: dict[str, Any], *, k: int, seed: int, images: torch.Tensor,
                lambdas: Sequence[tuple[float, float]] | None = None) -> list[dict[str, Any]]:
    """Grad-CAMs (M, B, H, W) of every member for `images`, one record per lambda pair.

    Default lambdas: classical (0, 0) and the method page's (lambda_cos, lambda_euc). Each record holds
    the lambdas, the run's metrics, the CAMs and the members' predictions (M, B).
    """
    if lambdas is None:
        lambdas = [(0.0, 0.0), (settings["lambda_cos"], settings["lambda_euc"])]
    records = []
    for lc, le in lambdas:
        result = run_fewshot(settings, k=k, seed=seed, lambda_cos=lc, lambda_euc=le)
        ensemble = load_ensemble(result)
        with torch.no_grad():
            preds = ensemble.member_logits(images).argmax(-1)
        records.append({"lambda_cos": lc, "lambda_euc": le, "metrics": result["metrics"],
                        "cams": fdl.member_gradcam(ensemble, images), "preds": preds,
                        "maps": fdl.descriptor_maps(ensemble, images)})
    return records


def lambda_grid(settings: dict[str, Any]) -> list[tuple[float, float]]:
    """Multiples of the method page's (lambda_cos, lambda_euc) for the lambda slider (0 = classical)."""
    scales = config.pick(quick=(0.0, 1.0), lab=(0.0, 0.1, 1.0, 3.0), full=(0.0, 0.01, 0.1, 0.3, 1.0, 3.0))
    return [(settings["lambda_cos"] * s, settings["lambda_euc"] * s) for s in scales]
