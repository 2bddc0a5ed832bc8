"""What notebook 03 measures on a trained zoo (E1-E4; docs/methods/interchange.md).

A zoo (`interchange_experiments.Zoo`) holds members trained on the same classes; every function
here reads their cached embeddings and heads, fits maps between them with
`labkit.methods.interchange` and returns a typed result:

* `fit_pair` / `evaluate_map` (`MapScores`): one map and its held-out accuracy, retention, R^2;
* E1 `closed_form_matrix` (`ClosedFormMatrix`) and `closed_form_checks`;
* E2 `retention_matrix` (`RetentionMatrix`), `controls` (`Controls`), `retention_vs_pairs`,
  `retention_vs_rank`;
* E3 `similarity_rows` (`Similarity` of `PairSimilarity` rows);
* E4 `open_set_results` (`OpenSetResults` of `MappedScores`);
* the map explorer's one state: `explore_map` (`MapView`) over `MAP_METHODS`;
* `synthetic_zoo`: a toy zoo of typed members, without training (tests, demos).

This is its own module, beside the paper's maths in `interchange.py` (maps, measures, scores on
tensors, ~800 lines), because it is a second layer: analyses of a runner's zoo, which import
the runner's types, where `interchange.py` knows nothing of zoos.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations, permutations
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from labkit.methods import interchange as ic
from labkit.methods.interchange_experiments import ZOO_ARCHS, Result, Settings, Zoo

__all__ = [
    "MapScores", "fit_pair", "evaluate_map",
    "ClosedFormMatrix", "closed_form_matrix", "closed_form_checks",
    "RetentionMatrix", "retention_matrix", "Controls", "controls",
    "retention_vs_pairs", "retention_vs_rank",
    "PairSimilarity", "Similarity", "similarity_rows",
    "MappedScores", "OpenSetResults", "open_set_results",
    "MAP_METHODS", "MapView", "explore_map", "synthetic_zoo",
]


# ----------------------------------------------------------------------------- one map

def _subset(n_total: int, n: int | None, seed: int) -> torch.Tensor | None:
    if n is None or n >= n_total:
        return None
    if n < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n}")
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n]


def fit_pair(zoo: Zoo, src: str, dst: str, method: str = "affine", *, n_pairs: int | None = None,
             seed: int = 0, split: str = "train", **options: Any) -> ic.EmbeddingMap:
    """Fit `method` from member `src`'s to member `dst`'s embeddings (float64) on `n_pairs`
    seeded random images of `split` (default: all training images)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    a, b = zoo.member(src), zoo.member(dst)
    x, y = (a.train_emb, b.train_emb) if split == "train" else (a.test_emb, b.test_emb)
    index = _subset(len(x), n_pairs, seed)
    if index is not None:
        x, y = x[index], y[index]
    return ic.fit_map(x.double(), y.double(), method, **options)


@dataclass(frozen=True)
class MapScores:
    """A map A -> B on the test images: B's head on A's mapped embeddings (accuracy), B's own
    accuracy (target_accuracy), retention = accuracy / target_accuracy, and the R^2 of the
    mapped embeddings against B's."""

    accuracy: float
    target_accuracy: float
    retention: float
    r2: float


def evaluate_map(zoo: Zoo, src: str, dst: str, emb_map: ic.EmbeddingMap) -> MapScores:
    """Held-out (test) `MapScores` of `emb_map` from member `src` into member `dst`."""
    a, b = zoo.member(src), zoo.member(dst)
    mapped_acc = ic.mapped_accuracy(emb_map, a.test_emb.double(), b.head, zoo.test_labels)
    return MapScores(mapped_acc, b.test_acc, ic.retention(mapped_acc, b.test_acc),
                     ic.r2_score(emb_map(a.test_emb.double()), b.test_emb.double()))


# ----------------------------------------------------------------------------- E1 closed form

@dataclass
class ClosedFormMatrix:
    """The closed-form map (from the logit layers) for every ordered pair (source row i, target
    column j; NaN diagonal). agreement: share of test images where B's head on the mapped
    embedding predicts what A predicts; accuracy: B's head on the mapped embeddings;
    max_logit_error: largest |mapped logit - A's logit|; exact: rank(W_B) = C. dims: each
    member's embedding dim; num_classes: C."""

    names: list[str]
    agreement: np.ndarray
    accuracy: np.ndarray
    max_logit_error: np.ndarray
    exact: np.ndarray
    dims: list[int]
    num_classes: int


def closed_form_matrix(zoo: Zoo, names: Sequence[str] | None = None) -> ClosedFormMatrix:
    """`ClosedFormMatrix` of `names` (default: the members and the d < C extra)."""
    if names is None:
        names = zoo.names + ([zoo.extras["low_dim"].name] if "low_dim" in zoo.extras else [])
    names = list(names)
    k = len(names)
    out = {key: np.full((k, k), np.nan) for key in ("agreement", "accuracy", "max_logit_error")}
    exact = np.zeros((k, k), dtype=bool)
    for (i, src), (j, dst) in permutations(enumerate(names), 2):
        a, b = zoo.member(src), zoo.member(dst)
        w_a, b_a = (t.double() for t in a.head)
        w_b, b_b = (t.double() for t in b.head)
        emb_map = ic.map_from_heads(w_a, b_a, w_b, b_b)
        f_a = a.test_emb.double()
        source = ic.head_logits((w_a, b_a), f_a)
        mapped = ic.head_logits((w_b, b_b), emb_map(f_a))
        out["agreement"][i, j] = float((mapped.argmax(1) == source.argmax(1)).double().mean())
        out["accuracy"][i, j] = float((mapped.argmax(1) == zoo.test_labels).double().mean())
        out["max_logit_error"][i, j] = float((mapped - source).abs().max())
        exact[i, j] = emb_map.info["exact"]
    return ClosedFormMatrix(names, **out, exact=exact, dims=[zoo.member(n).dim for n in names],
                            num_classes=len(zoo.classes))


def closed_form_checks(result: ClosedFormMatrix) -> dict[str, bool]:
    """The two facts of E1: every map into a target whose embedding dim d >= C is exact
    (rank(W_B) = C) and reproduces A's predictions on every test image; no map into a target
    with d < C is exact (its logits differ from A's) and such maps change some predictions
    (agreement below 1 for at least one pair: a low-rank head can still preserve every argmax
    by luck). Not a comparison over seeds, so not one of the runner's `claims`."""
    dims, c = np.asarray(result.dims), result.num_classes
    off = ~np.eye(len(dims), dtype=bool)
    wide = off & (dims[None, :] >= c)
    narrow = off & (dims[None, :] < c)
    checks = {"exact_when_target_dim_ge_classes": bool(result.exact[wide].all()
                                                       and (result.agreement[wide] == 1.0).all())}
    if narrow.any():
        checks["inexact_when_target_dim_lt_classes"] = bool(
            not result.exact[narrow].any() and (result.max_logit_error[narrow] > 1e-6).all()
            and (result.agreement[narrow] < 1.0).any())
    return checks


# ----------------------------------------------------------------------------- E2 fitted maps

@dataclass
class RetentionMatrix:
    """Source x target matrices (NaN diagonal) of `MapScores` for maps fitted by one method;
    own_accuracy: each member's own test accuracy."""

    names: list[str]
    retention: np.ndarray
    accuracy: np.ndarray
    r2: np.ndarray
    own_accuracy: list[float]

    @property
    def median(self) -> float:
        """Median retention over all ordered pairs of distinct members."""
        return ic.off_diagonal_median(self.retention)


def retention_matrix(zoo: Zoo, method: str = "affine", *, names: Sequence[str] | None = None,
                     n_pairs: int | None = None, seed: int = 0, split: str = "train",
                     **options: Any) -> RetentionMatrix:
    """`RetentionMatrix` of maps fitted by `method` (on `n_pairs` images of `split`, the pair
    (i, j) with seed `seed` + 7919 i + j) between `names` (default: the members)."""
    names = list(names if names is not None else zoo.names)
    k = len(names)
    out = {key: np.full((k, k), np.nan) for key in ("retention", "accuracy", "r2")}
    for (i, src), (j, dst) in permutations(enumerate(names), 2):
        emb_map = fit_pair(zoo, src, dst, method, n_pairs=n_pairs, seed=seed + 7919 * i + j,
                           split=split, **options)
        scores = evaluate_map(zoo, src, dst, emb_map)
        for key in out:
            out[key][i, j] = getattr(scores, key)
    return RetentionMatrix(names, **out, own_accuracy=[zoo.member(n).test_acc for n in names])


@dataclass(frozen=True)
class Controls:
    """Median retention of the fitted map beside its controls (not in the paper; see
    docs/methods/interchange.md). fitted: `method` on the training images; fit_on_test: fitted
    on the test images it is evaluated on (in-sample); identity: the identity map between two
    seeds of one architecture (n_identity_pairs, both directions); shuffled: fitted on shuffled
    correspondences (n_pairs ordered pairs); random_init: from an untrained network into each
    member (NaN without one); chance: 1 / C over the members' median own accuracy."""

    fitted: float
    fit_on_test: float
    identity: float
    shuffled: float
    random_init: float
    chance: float
    n_identity_pairs: int
    n_pairs: int

    @property
    def fitted_beats_controls(self) -> bool:
        """The fitted map keeps more than the identity and the shuffled fit."""
        return self.fitted > max(self.identity, self.shuffled)


def controls(zoo: Zoo, method: str = "affine", seed: int = 0) -> Controls:
    """`Controls` of `zoo`'s members (shuffled fits seeded `seed` + pair number)."""
    by_arch: dict[str, list[str]] = {}
    for m in zoo.members:
        by_arch.setdefault(m.arch, []).append(m.name)
    identity = [evaluate_map(zoo, src, dst, ic.identity_map(zoo.member(src).dim,
                                                            torch.float64)).retention
                for group in by_arch.values() for src, dst in permutations(group, 2)]
    shuffled = []
    for k, (src, dst) in enumerate(permutations(zoo.names, 2)):
        a, b = zoo.member(src), zoo.member(dst)
        emb_map = ic.shuffled_fit(a.train_emb.double(), b.train_emb.double(), method, seed=seed + k)
        shuffled.append(evaluate_map(zoo, src, dst, emb_map).retention)
    random_init = []
    if "random_init" in zoo.extras:
        source = zoo.extras["random_init"].name
        random_init = [evaluate_map(zoo, source, dst, fit_pair(zoo, source, dst, method)).retention
                       for dst in zoo.names]
    return Controls(
        fitted=retention_matrix(zoo, method).median,
        fit_on_test=retention_matrix(zoo, method, split="test").median,
        identity=float(np.median(identity)) if identity else math.nan,
        shuffled=float(np.median(shuffled)),
        random_init=float(np.median(random_init)) if random_init else math.nan,
        chance=1.0 / len(zoo.classes) / float(np.median([m.test_acc for m in zoo.members])),
        n_identity_pairs=len(identity), n_pairs=len(shuffled))


def retention_vs_pairs(zoo: Zoo, ns: Sequence[int],
                       methods: Mapping[str, tuple[str, dict[str, Any]]] | None = None,
                       names: Sequence[str] | None = None, seed: int = 0) -> dict[str, list[float]]:
    """Median retention over ordered pairs vs the number of fitting pairs N, per method.

    methods: label -> (method, options); default affine, ridge (alpha = 1) and Procrustes."""
    methods = methods or {"affine (OLS)": ("affine", {}), "ridge (alpha=1)": ("ridge", {"alpha": 1.0}),
                          "Procrustes": ("procrustes", {})}
    return {label: [retention_matrix(zoo, method, names=names, n_pairs=n, seed=seed, **opts).median
                    for n in ns] for label, (method, opts) in methods.items()}


def retention_vs_rank(zoo: Zoo, ranks: Sequence[int], names: Sequence[str] | None = None,
                      alpha: float = 0.0) -> list[float]:
    """Median retention over ordered pairs of reduced-rank maps, for each rank k."""
    return [retention_matrix(zoo, "reduced_rank", names=names, rank=k, alpha=alpha).median
            for k in ranks]


# ----------------------------------------------------------------------------- E3 similarity

@dataclass(frozen=True)
class PairSimilarity:
    """One unordered member pair "A / B": each similarity index on the test embeddings
    (`index`), the same with B's rows shuffled (`shuffled`: the pairing broken, what the index
    gives by chance; may be empty), and the mean retention of the two fitted maps."""

    pair: str
    same_arch: bool
    index: dict[str, float]
    shuffled: dict[str, float]
    retention: float


@dataclass
class Similarity:
    """E3: one `PairSimilarity` per unordered pair and each index's Spearman rho with
    retention."""

    rows: list[PairSimilarity]
    spearman: dict[str, float]

    def baseline(self) -> dict[str, float]:
        """Each index's shuffled-pairs baseline: its median over pairs."""
        return {key: float(np.median([r.shuffled[key] for r in self.rows]))
                for key in self.rows[0].shuffled}

    def beyond_baseline(self) -> bool:
        """Every index sits beyond its shuffled value on every pair (the Procrustes distance
        below it, the similarities above it)."""
        return all(r.index[key] < value if key == "procrustes" else r.index[key] > value
                   for r in self.rows for key, value in r.shuffled.items())


def similarity_rows(zoo: Zoo, method: str = "affine", *, seed: int = 0) -> Similarity:
    """Per unordered member pair: each of `ic.SIMILARITY_INDICES` (linear CKA biased and
    debiased, mean CCA, SVCCA, Procrustes distance) on the test embeddings, the same with B's
    rows shuffled (seed `seed` + pair number) and the mean retention of the maps A->B, B->A."""
    matrix = retention_matrix(zoo, method)
    position = {n: i for i, n in enumerate(matrix.names)}
    rows = []
    for k, (src, dst) in enumerate(combinations(zoo.names, 2)):
        x, y = zoo.member(src).test_emb.double(), zoo.member(dst).test_emb.double()
        shuffled = ic.shuffled_rows(y, seed + k)
        i, j = position[src], position[dst]
        rows.append(PairSimilarity(
            f"{src} / {dst}", zoo.member(src).arch == zoo.member(dst).arch,
            {key: f(x, y) for key, f in ic.SIMILARITY_INDICES.items()},
            {key: f(x, shuffled) for key, f in ic.SIMILARITY_INDICES.items()},
            float((matrix.retention[i, j] + matrix.retention[j, i]) / 2)))
    rhos = {key: ic.spearman([r.index[key] for r in rows], [r.retention for r in rows])
            for key in ic.SIMILARITY_INDICES}
    return Similarity(rows, rhos)


# ----------------------------------------------------------------------------- E4 open set

@dataclass(frozen=True)
class MappedScores:
    """Verification and retrieval of probes M f_A(x) against B's gallery f_B(y): AUC, EER,
    TAR at each FAR ("tar@far=0.01", ...) and rank-1 retrieval ("recall@1")."""

    source: str
    target: str
    metrics: dict[str, float]


@dataclass
class OpenSetResults:
    """E4. native: each member's metrics on its own embeddings; pairs: every ordered pair's
    mapped metrics; shuffled_control: a shuffled-correspondence map for one pair; curves: ROC
    TARs on the log FAR `grid` ("<name> native", "<A> -> <B> mapped", "<A> -> <B> shuffled
    control"); n_unseen: the unseen images; fars: the FARs of the TAR metrics."""

    native: dict[str, dict[str, float]]
    pairs: list[MappedScores]
    shuffled_control: MappedScores
    grid: np.ndarray
    curves: dict[str, np.ndarray]
    n_unseen: int
    fars: tuple[float, ...]

    @property
    def mapped_beats_control(self) -> bool:
        """The median mapped EER is below the shuffled control's."""
        return bool(np.median([p.metrics["eer"] for p in self.pairs])
                    < self.shuffled_control.metrics["eer"])


def open_set_results(zoo: Zoo, method: str = "affine", *, normalize: bool = True,
                     fars: Sequence[float] = (1e-2, 1e-3), controls_pair: int = 0,
                     **options: Any) -> OpenSetResults:
    """Verification and rank-1 retrieval on the unseen classes, native vs mapped.

    For every member: its native metrics (its own embeddings of the unseen images, all pairs of
    distinct images). For every ordered pair: the map fitted on seen-class images only, then
    probes M f_A(x) against B's gallery f_B(y). `normalize` L2-normalises embeddings before
    fitting (the scores are cosines, so only directions matter). Also a shuffled-map control
    for the pair `controls_pair`, and ROC curves on a log FAR grid for plotting.
    """
    grid = np.logspace(-4, 0, 60)

    def prep(t: torch.Tensor) -> torch.Tensor:
        t = t.double()
        return F.normalize(t, dim=1) if normalize else t

    labels = zoo.test_labels
    native, curves = {}, {}
    for m in zoo.members:
        test = prep(m.test_emb)
        native[m.name], far, tar = ic.score_protocol(test, test, labels, fars)
        curves[f"{m.name} native"] = ic.roc_on_grid(far, tar, grid)

    def mapped(src: str, dst: str, emb_map: ic.EmbeddingMap, label: str) -> MappedScores:
        metrics, far, tar = ic.score_protocol(emb_map(prep(zoo.member(src).test_emb)),
                                              prep(zoo.member(dst).test_emb), labels, fars)
        curves[f"{src} -> {dst} {label}"] = ic.roc_on_grid(far, tar, grid)
        return MappedScores(src, dst, metrics)

    pairs = [mapped(src, dst, ic.fit_map(prep(zoo.member(src).train_emb),
                                         prep(zoo.member(dst).train_emb), method, **options),
                    "mapped")
             for src, dst in permutations(zoo.names, 2)]
    src, dst = list(permutations(zoo.names, 2))[controls_pair]
    shuffled = ic.shuffled_fit(prep(zoo.member(src).train_emb), prep(zoo.member(dst).train_emb),
                               method, **options)
    control = mapped(src, dst, shuffled, "shuffled control")
    return OpenSetResults(native, pairs, control, grid, curves, int(len(labels)), tuple(fars))


# ----------------------------------------------------------------------------- the explorer

MAP_METHODS = (*ic.METHODS, "heads (closed form)", "identity")  # what the explorer can build


@dataclass(frozen=True)
class MapView(MapScores):
    """One explorer state: the map (emb_map), its `MapScores`, A's own accuracy and the two
    spaces' linear CKA on the test images, biased (cka) and debiased (cka_debiased)."""

    emb_map: ic.EmbeddingMap
    source_accuracy: float
    cka: float
    cka_debiased: float


def explore_map(zoo: Zoo, src: str, dst: str, method: str = "affine", *,
                rank: int | None = None, alpha: float = 1.0,
                n_pairs: int | None = None) -> MapView:
    """The map from `src` to `dst` built by `method` (one of `MAP_METHODS`) and its held-out
    numbers. `rank` (reduced_rank, default min(d_A, d_B)), `alpha` (ridge) and `n_pairs`
    (fitted maps; default all training images) are read where they apply."""
    if method not in MAP_METHODS:
        raise ValueError(f"unknown explorer map {method!r}; use one of {MAP_METHODS}")
    a, b = zoo.member(src), zoo.member(dst)
    if method == "heads (closed form)":
        emb_map = ic.map_from_heads(*(t.double() for t in a.head), *(t.double() for t in b.head))
    elif method == "identity":
        if a.dim != b.dim:
            raise ValueError(f"the identity map needs equal dims, got {a.dim} and {b.dim}")
        emb_map = ic.identity_map(a.dim, dtype=torch.float64)
    else:
        options: dict[str, Any] = {}
        if method == "ridge":
            options["alpha"] = alpha
        if method == "reduced_rank":
            options["rank"] = rank if rank is not None else min(a.dim, b.dim)
        emb_map = fit_pair(zoo, src, dst, method, n_pairs=n_pairs, **options)
    scores = evaluate_map(zoo, src, dst, emb_map)
    return MapView(scores.accuracy, scores.target_accuracy, scores.retention, scores.r2,
                   emb_map, a.test_acc, ic.linear_cka(a.test_emb.double(), b.test_emb.double()),
                   ic.linear_cka(a.test_emb, b.test_emb, debiased=True))


# ----------------------------------------------------------------------------- a toy zoo

def synthetic_zoo(n_members: int = 3, dim: int = 8, num_classes: int = 4, n_train: int = 240,
                  n_test: int = 120, noise: float = 0.3, seed: int = 0) -> Zoo:
    """A toy zoo without training, for tests and demos: every member sees the same latent class
    structure z (class centre + noise) through its own random invertible linear map plus a little
    member-specific noise, so the spaces really are affine images of each other. Heads are
    least-squares fits to one-hot labels (with a bias). Member k ("toy<k>") has the settings of
    architecture `ZOO_ARCHS[k % 2]`, seed k // 2, on the dataset "synthetic"."""
    if n_members < 2 or dim < 1 or num_classes < 2:
        raise ValueError("need n_members >= 2, dim >= 1 and num_classes >= 2")
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(num_classes, dim, generator=g)
    labels = torch.arange(n_train + n_test) % num_classes
    z = centres[labels] + noise * torch.randn(len(labels), dim, generator=g)
    members = []
    for k in range(n_members):
        mixing = torch.randn(dim, dim, generator=g) + 2.0 * torch.eye(dim)
        emb = (z @ mixing + 0.1 * noise * torch.randn(len(labels), dim, generator=g)
               + torch.randn(dim, generator=g))
        head = ic.fit_map(emb[:n_train].double(), F.one_hot(labels[:n_train], num_classes).double())
        weight, bias = head.weight.float(), head.bias.float()
        logits = ic.head_logits((weight, bias), emb[n_train:].float())
        accuracy = float((logits.argmax(1) == labels[n_train:]).float().mean())
        settings = Settings(arch=ZOO_ARCHS[k % 2], seed=k // 2, dim=dim, epochs=0,
                            dataset="synthetic", arch_options={})
        members.append(Result(settings, {"test_acc": accuracy}, [], emb[:n_train].float(),
                              emb[n_train:].float(), weight, bias, name=f"toy{k}"))
    return Zoo(members, labels[:n_train].clone(), labels[n_train:].clone(),
               [str(c) for c in range(num_classes)])
