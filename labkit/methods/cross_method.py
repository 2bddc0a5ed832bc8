"""Questions that join the methods (notebook 06), measured with their own runners.

No single paper asks them; each answer reuses a runner's cached runs and another paper's tools:

* (a) are fixed-polytope networks more interchangeable than learned-head ones? `polytope_zoo`
  turns RePoNet runs into an interchange `Zoo`, and `pair_scores` measures every ordered pair:
  the retention of the target's head on the source's raw embedding (no map), of an affine map
  fitted on a few pairs and on all training images, and linear CKA;
* (b) do FDL members still live in linearly interchangeable spaces? `ensemble_zoo` makes an
  ensemble's members a zoo, and `ensemble_scores` averages `pair_scores` over its member pairs;
* (c) does GSP pooling combine with APFS batches? `combination_settings` is the APFS runner
  with the GSP runner's network, and `combination_grid` its 2 x 2 (GAP or GSP, plain or APFS
  batches) over seeds; `combination_gains` pairs the cells by seed;
* (d) neural collapse of metric-learning embeddings: `collapse` is NC1/NC2 of a retrieval run's
  unit embeddings on its seen and unseen classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import permutations
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from labkit.core import config
from labkit.core.data import load_memoised
from labkit.core.evaluate import embed
from labkit.core.experiment import Summary
from labkit.core.report import PairedGain, by_seed, group_spreads, paired_gain, spread
from labkit.methods import apfs_experiments as ax
from labkit.methods import fdl_experiments as fx
from labkit.methods import gsp_experiments as gx
from labkit.methods import interchange as ic
from labkit.methods import interchange_analysis as ia
from labkit.methods import reponet as rp
from labkit.methods import reponet_experiments as rx
from labkit.methods.interchange_experiments import Zoo

FEW_PAIRS = 20  # images an affine map is fitted on in the sample-poor reading
ENSEMBLE_K = 100  # FDL's largest k: the members classify well enough for their spaces to matter


def seeds() -> tuple[int, ...]:
    """The seeds of (a) and (b) (the profile's)."""
    return config.pick(quick=(0, 1), lab=(0, 1, 2))


def polytope_runs(*, progress: bool = False) -> list[rx.Result]:
    """RePoNet's plain simplex head, then a learned head at the simplex's d = K - 1, per seed
    of `seeds()`, in the profile's settings (cached by the RePoNet runner)."""
    base = rx.Settings.for_profile()
    return [*rx.sweep(base.replace(head="simplex"), progress=progress, seed=seeds()),
            *rx.sweep(base.replace(head="learned", feat_dim=base.dim), progress=progress,
                      seed=seeds())]


def ensemble_runs(*, progress: bool = False) -> dict[str, list[fx.Result]]:
    """{"classical" / "fdl": the FDL runner's ensembles at k = `ENSEMBLE_K`, per seed}."""
    base = fx.Settings.for_profile(k=ENSEMBLE_K)
    return {method: fx.sweep(base.replace(use_fdl=method == "fdl"), progress=progress,
                             seed=seeds()) for method in fx.METHODS}


@dataclass
class Member:
    """A zoo member made from another runner's run. kind: what it is compared as ("simplex",
    "learned", "fdl", "classical"); train_emb (N, d) / test_emb (M, d) float32; the logit
    layer logits = f W^T + b with W (K, d), b (K,); test_acc: that layer's top-1 accuracy."""

    name: str
    kind: str
    train_emb: torch.Tensor
    test_emb: torch.Tensor
    head_weight: torch.Tensor
    head_bias: torch.Tensor
    test_acc: float

    @property
    def arch(self) -> str:  # what the zoo analyses group members by
        return self.kind

    @property
    def dim(self) -> int:
        return int(self.train_emb.shape[1])

    @property
    def head(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head_weight, self.head_bias


def _member(name: str, kind: str, train_emb: torch.Tensor, test_emb: torch.Tensor,
            weight: torch.Tensor, bias: torch.Tensor | None, test_labels: torch.Tensor) -> Member:
    weight = weight.detach().float().cpu()
    bias = torch.zeros(len(weight)) if bias is None else bias.detach().float().cpu()
    logits = ic.head_logits((weight, bias), test_emb)
    return Member(name, kind, train_emb, test_emb, weight, bias,
                  float((logits.argmax(1) == test_labels).float().mean()))


def polytope_zoo(results: Sequence[rx.Result]) -> Zoo:
    """RePoNet runs of one dataset, class set and d as a `Zoo`: each network's features of all
    training and test images and its logit layer (a fixed polytope's vertices with no bias, or
    the learned layer). Heads whose logits are not linear in f (the margin variant's cosines,
    or a polytope with spare vertices) are refused."""
    first = results[0].settings
    train, test, _ = rx.load_data(first)
    members = []
    for result in results:
        s = result.settings
        if (s.dataset, s.classes, s.dim, s.train_per_class, s.test_per_class) != (
                first.dataset, first.classes, first.dim, first.train_per_class,
                first.test_per_class):
            raise ValueError(f"{s.label} seed {s.seed} has other data or d than {first.label}")
        model = result.model()
        weight = model.head.weight  # a polytope's vertices (V, d), or the learned layer
        if s.margin or s.head == "hadamard" or len(weight) != s.num_classes:
            raise ValueError(f"{s.label}: a zoo needs logits f W^T with one row per class (a "
                             "polytope without spare vertices or margin, learned, center)")
        members.append(_member(f"{s.head}-s{s.seed}", s.head, embed(model, train.images),
                               result.test_features, weight, None, test.labels.cpu()))
    return Zoo(members, train.labels.cpu().clone(), test.labels.cpu().clone(), list(train.classes))


def ensemble_zoo(result: fx.Result) -> Zoo:
    """An FDL run's members as a `Zoo`: each member's embedding (the dense layer before its
    head, eval mode) of every training image of the dataset (the maps need no labels, so the
    few-shot members are fitted on far more images than they were trained on) and of the
    run's test set, and its logit layer."""
    s = result.settings
    train = load_memoised(s.dataset, "train")
    _, test = fx.load_split(s)
    labels = test.labels.cpu()
    members = [_member(f"{s.method}-s{s.seed}-m{i}", s.method, embed(net, train.images),
                       embed(net, test.images), net.head.weight, net.head.bias, labels)
               for i, net in enumerate(result.ensemble().members)]
    return Zoo(members, train.labels.cpu().clone(), labels.clone(), list(train.classes))


@dataclass(frozen=True)
class PairScores:
    """One ordered pair A -> B: retention (B's head on A's mapped test embeddings, over B's own
    accuracy) with no map (identity), with an affine map fitted on `FEW_PAIRS` and on all
    training images; linear CKA of their test embeddings (symmetric)."""

    src: str
    dst: str
    kinds: str  # "simplex -> learned"
    identity: float
    affine_few: float
    affine_all: float
    cka: float

    MEASURES = ("identity", "affine_few", "affine_all", "cka")


def pair_scores(zoo: Zoo, *, few: int = FEW_PAIRS, seed: int = 0) -> list[PairScores]:
    """`PairScores` of every ordered pair of the zoo's members (the few pairs drawn with seed
    `seed` + the pair's number)."""
    rows = []
    for k, (src, dst) in enumerate(permutations(zoo.names, 2)):
        a, b = zoo.member(src), zoo.member(dst)
        identity = (ia.evaluate_map(zoo, src, dst, ic.identity_map(a.dim, torch.float64)).retention
                    if a.dim == b.dim else float("nan"))
        scores = [ia.evaluate_map(zoo, src, dst, ia.fit_pair(zoo, src, dst, n_pairs=n,
                                                             seed=seed + k)).retention
                  for n in (few, None)]
        rows.append(PairScores(src, dst, f"{a.arch} -> {b.arch}", identity, *scores,
                               ic.linear_cka(a.test_emb.double(), b.test_emb.double())))
    return rows


def pair_matrix(rows: Sequence[PairScores], names: Sequence[str], measure: str) -> np.ndarray:
    """Source x target matrix (NaN diagonal) of one of `PairScores.MEASURES`."""
    position = {name: i for i, name in enumerate(names)}
    matrix = np.full((len(names), len(names)), np.nan)
    for row in rows:
        matrix[position[row.src], position[row.dst]] = getattr(row, measure)
    return matrix


def by_kinds(rows: Sequence[PairScores]) -> dict[str, dict[str, Any]]:
    """{"A kind -> B kind": {measure: Spread over those ordered pairs}}, first-seen order."""
    groups: dict[str, list[PairScores]] = {}
    for row in rows:
        groups.setdefault(row.kinds, []).append(row)
    return {kinds: {m: spread(getattr(r, m) for r in group) for m in PairScores.MEASURES}
            for kinds, group in groups.items()}


def kind_gain(rows: Sequence[PairScores], measure: str, kind: str, reference: str) -> PairedGain:
    """`measure` of the `kind` -> `kind` pairs minus that of the `reference` -> `reference` pairs
    of the same seeds (members named "<kind>-s<seed>", as `polytope_zoo` names them), paired by
    the ordered seed pair."""
    def of(k: str) -> dict[tuple[str, str], float]:
        return {(r.src.removeprefix(f"{k}-"), r.dst.removeprefix(f"{k}-")): getattr(r, measure)
                for r in rows if r.kinds == f"{k} -> {k}"}
    return paired_gain(of(kind), of(reference))


def ensemble_scores(result: fx.Result) -> dict[str, float]:
    """One ensemble's means over its ordered member pairs (`PairScores.MEASURES`), with the
    members' mean accuracy and the run's CAM and map overlaps (`fdl_experiments.OVERLAPS`)."""
    zoo = ensemble_zoo(result)
    rows = pair_scores(zoo, seed=result.settings.seed)
    means = {m: sum(getattr(r, m) for r in rows) / len(rows) for m in PairScores.MEASURES}
    return {**means, "member_accuracy": sum(m.test_acc for m in zoo.members) / len(zoo.members),
            **{m: result.metrics[m] for m in fx.OVERLAPS[:2]}}


# ----------------------------------------------------------------------------- (c) and (d)

POOLINGS = ("gap", "gsp")
BATCHES = ("baseline", "apfs")  # the APFS runner's variants: plain m-per-class or APFS batches


def combination_settings(**changes: Any) -> ax.Settings:
    """The APFS runner (its budget, losses and batches) with the GSP runner's network: the slim
    VGG whose last map stays at full resolution and the GSP layer's K, mu and gamma, all of
    the active profile; the loss multi-similarity, where APFS helped in notebook 05."""
    g = gx.Settings.for_profile(loss="multi_similarity")
    base = dict(loss="multi_similarity", arch=g.arch, widths=g.widths, dim=g.dim,
                num_prototypes=g.num_prototypes, mu=g.mu, gamma=g.transport_gamma,
                pooling="gsp")
    return ax.Settings.for_profile(**{**base, **changes})


def combination_seeds() -> tuple[int, ...]:
    return config.pick(quick=(0, 1), lab=(0, 1, 2, 3, 4))


def combination_grid(settings: ax.Settings | None = None, *, progress: bool = False
                     ) -> list[ax.Result]:
    """The 2 x 2 (pooling x batches) over `combination_seeds()`, cached by the APFS runner."""
    return ax.sweep(settings or combination_settings(), progress=progress, pooling=POOLINGS,
                    variant=BATCHES, seed=combination_seeds())


def collapse(result: ax.Result) -> dict[str, float]:
    """NC1 and NC2 (`reponet.neural_collapse`) of the run's L2-normalised embeddings, the space
    its loss and retrieval read: on the seen (training) classes and on the unseen ones."""
    train, test = ax.load_split(result.settings)
    model = result.model()
    out = {}
    for split, data in (("seen", train), ("unseen", test)):
        labels = torch.unique(data.labels.cpu(), return_inverse=True)[1]
        nc = rp.neural_collapse(F.normalize(embed(model, data.images), dim=1), labels)
        out |= {f"nc1_{split}": nc["nc1"], f"nc2_{split}": nc["nc2"]}
    return out


def combination_rows(results: Sequence[ax.Result]) -> list[dict[str, Any]]:
    """One row per run: pooling, batches, seed, its retrieval metrics and `collapse`."""
    return [{"pooling": r.settings.pooling, "batches": r.settings.variant,
             "seed": r.settings.seed, **r.metrics, **collapse(r)} for r in results]


def combination_summary(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = (
        "recall@1", "map@r", "nmi", "nc1_seen", "nc2_seen", "nc1_unseen", "nc2_unseen")
                        ) -> Summary:
    """The 2 x 2 as a `Summary` by (pooling, batches): mean ± std over seeds per cell."""
    return Summary(("pooling", "batches"), list(rows),
                   group_spreads(rows, ("pooling", "batches"), metrics))


def combination_gains(rows: Sequence[Mapping[str, Any]], metric: str = "recall@1"
                      ) -> dict[str, PairedGain]:
    """Paired by seed: GSP - GAP under each batching and APFS - plain under each pooling (two
    of these are the combination against each method alone), and the interaction: GSP's gain
    with APFS batches minus its gain without (0: the two effects simply add)."""
    cell = {(p, b): by_seed(rows, metric, {"pooling": p, "batches": b})
            for p in POOLINGS for b in BATCHES}
    both, gsp_alone, apfs_alone, neither = (cell["gsp", "apfs"], cell["gsp", "baseline"],
                                            cell["gap", "apfs"], cell["gap", "baseline"])
    interaction = {s: both[s] - apfs_alone[s] - (gsp_alone[s] - neither[s])
                   for s in both if s in gsp_alone and s in apfs_alone and s in neither}
    return {"GSP - GAP, plain batches": paired_gain(gsp_alone, neither),
            "GSP - GAP, APFS batches (both - APFS alone)": paired_gain(both, apfs_alone),
            "APFS - plain, GAP": paired_gain(apfs_alone, neither),
            "APFS - plain, GSP (both - GSP alone)": paired_gain(both, gsp_alone),
            "interaction": paired_gain(interaction, dict.fromkeys(interaction, 0.0))}
