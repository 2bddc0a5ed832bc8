"""Evaluation: accuracy, retrieval metrics (recall@K, MAP@R, R-precision, NMI), feature geometry.

`retrieval_metrics` follows pytorch-metric-learning's AccuracyCalculator conventions (cosine
similarity of L2-normalised embeddings, each query against all other samples, queries whose
class has no other member are left out, R = number of other samples of the query's class) but
computes the neighbours in chunks with a top-k of only max(K) / max class size, so memory stays
bounded on large test sets such as Stanford Online Products (60,502 images).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from labkit.core.models import eval_mode


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int = 512,
          device: torch.device | str | None = None, logits: bool = False) -> torch.Tensor:
    """Embeddings (N, d) of `images` (or the logits (N, K) when `logits`), in eval mode, on the CPU."""
    device = torch.device(device) if device is not None else _device_of(model)
    parts = []
    with eval_mode(model.to(device)):
        for i in range(0, len(images), batch_size):
            out = model.forward_all(images[i:i + batch_size].to(device))
            parts.append((out.logits if logits else out.embedding).float().cpu())
    return torch.cat(parts)


def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits (N, K) of a classifier network."""
    return embed(model, images, batch_size, logits=True)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1] of logits (N, K) against labels (N,)."""
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} predictions but {labels.shape[0]} labels")
    return float((logits.argmax(1).cpu() == labels.cpu()).float().mean())


def model_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return accuracy(predict_logits(model, images), labels)


# ----------------------------------------------------------------------------- retrieval

def _matmul_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T for float32 blocks. On the CPU through numpy's BLAS (OpenBLAS), which ran these
    products 1.7x faster than the MKL inside torch's wheels on our AMD EPYC machines (135 vs 80
    GFLOP/s on 2 cores, where MKL does not pick its fast paths); elsewhere torch's own matmul."""
    if a.device.type == "cpu" and a.dtype == torch.float32 and b.dtype == torch.float32:
        return torch.from_numpy(a.numpy() @ b.numpy().T)
    return a @ b.T


def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0, chunk: int = 1024,
           max_points_per_centroid: int = 256) -> torch.Tensor:
    """Lloyd's k-means as faiss runs it for pytorch-metric-learning; returns assignments (N,).

    Init: k distinct random points; at most `iters` updates of the centroids (PML asks faiss for
    20), trained on a random sample of at most `max_points_per_centroid` * k points (all points
    for SOP-sized label sets); then every point is assigned to its nearest final centroid. Stops
    early only at a fixed point (no assignment changed, so later updates would change nothing).
    Memory: a (chunk, k) score block.
    """
    return _kmeans(x, k, iters, seed, chunk, max_points_per_centroid)


def _kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0, chunk: int = 1024,
            max_points_per_centroid: int = 256, row_scale: torch.Tensor | None = None
            ) -> torch.Tensor:
    """`kmeans` of the rows of x * row_scale[:, None] (x unchanged, no scaled copy of it)."""
    if not 1 <= k <= len(x):
        raise ValueError(f"k must be in 1..{len(x)}, got {k}")
    generator = torch.Generator().manual_seed(seed)
    train = None
    if len(x) > max_points_per_centroid * k:  # faiss subsamples the training set like this
        train = torch.randperm(len(x), generator=generator)[:max_points_per_centroid * k]
        train = train.sort().values.to(x.device)
    num_train = len(x) if train is None else len(train)

    def rows(index: slice | torch.Tensor) -> torch.Tensor:
        block = x[index]
        return block if row_scale is None else block * row_scale[index, None]

    def train_rows(i: int) -> torch.Tensor:
        return rows(slice(i, i + chunk) if train is None else train[i:i + chunk])

    def assign_block(block: torch.Tensor, centroids: torch.Tensor,
                     neg_half_norms: torch.Tensor) -> torch.Tensor:
        # argmin ||x - c||^2 = argmax (x.c - ||c||^2 / 2)
        return _matmul_t(block, centroids).add_(neg_half_norms).argmax(1)

    first = torch.randperm(num_train, generator=generator)[:k].to(x.device)
    centroids = rows(first if train is None else train[first]).clone()
    previous = torch.full((num_train,), -1, dtype=torch.long, device=x.device)
    for _ in range(iters):
        neg_half_norms = -0.5 * (centroids * centroids).sum(1)
        sums = torch.zeros_like(centroids)
        counts = torch.zeros(k, dtype=torch.long, device=x.device)
        changed = torch.zeros((), dtype=torch.long, device=x.device)
        for i in range(0, num_train, chunk):
            block = train_rows(i)
            assign = assign_block(block, centroids, neg_half_norms)
            changed += (assign != previous[i:i + chunk]).sum()
            previous[i:i + chunk] = assign
            sums.index_add_(0, assign, block)
            counts += torch.bincount(assign, minlength=k)
        empty = bool((counts == 0).any())
        # a fixed point: the centroids below would come out the same (unless a cluster is empty,
        # as right after a split whose copy won no point: then the next split must still run)
        if not bool(changed) and not empty:
            break
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None],
                                centroids)
        if empty:
            centroids = _split_clusters(centroids, counts, generator)
    neg_half_norms = -0.5 * (centroids * centroids).sum(1)
    assign = torch.empty(len(x), dtype=torch.long, device=x.device)
    for i in range(0, len(x), chunk):
        assign[i:i + chunk] = assign_block(rows(slice(i, i + chunk)), centroids, neg_half_norms)
    return assign


def _split_clusters(centroids: torch.Tensor, counts: torch.Tensor,
                    generator: torch.Generator) -> torch.Tensor:
    """faiss's handling of an empty cluster: split a non-empty one (chosen with probability
    proportional to its size - 1, so never a single point) into two slightly perturbed copies,
    so k clusters survive."""
    sizes = counts.double().cpu()
    signs = torch.ones(centroids.shape[1], dtype=centroids.dtype, device=centroids.device)
    signs[1::2] = -1
    for empty in (sizes == 0).nonzero().squeeze(1).tolist():
        weights = (sizes - 1).clamp_min(0)
        donor = int(torch.multinomial(weights if bool(weights.any()) else sizes, 1,
                                      generator=generator))
        base = centroids[donor].clone()
        centroids[empty] = base * (1 + signs / 1024)
        centroids[donor] = base * (1 - signs / 1024)
        sizes[empty] = sizes[donor] / 2
        sizes[donor] -= sizes[empty]
    return centroids


def _nmi(labels: torch.Tensor, clusters: torch.Tensor) -> float:
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(labels.cpu().numpy(), clusters.cpu().numpy()))


@torch.no_grad()
def retrieval_metrics(embeddings: torch.Tensor, labels: torch.Tensor,
                      ks: Sequence[int] = (1, 2, 4, 8), *, nmi: bool = True, seed: int = 0,
                      chunk: int = 1024) -> dict[str, float]:
    """Retrieval metrics of every sample as a query against all other samples.

    embeddings (N, d), labels (N,). Returns recall@K for each K (a hit if any of the K nearest
    shares the query's class), `map@r`, `r_precision` and `nmi` (k-means with as many clusters as
    classes). Cosine similarity; lone queries (no other sample of their class) are left out.
    Memory beyond the inputs: a (chunk, N) similarity block; no normalised copy of the embeddings
    is made (rows are scaled by their inverse norms block by block).
    """
    if embeddings.ndim != 2 or labels.ndim != 1 or len(embeddings) != len(labels):
        raise ValueError(f"need embeddings (N, d) and labels (N,), got {tuple(embeddings.shape)} "
                         f"and {tuple(labels.shape)}")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if len(embeddings) < 2:
        raise ValueError("need at least two samples")
    x = embeddings.float()
    if not bool(torch.isfinite(x).all()):  # topk ranks NaN first: it would be everyone's neighbour
        raise ValueError("embeddings contain NaN or inf")
    inv_norms = 1.0 / torch.linalg.vector_norm(x, dim=1).clamp_min(1e-12)  # as F.normalize
    labels = labels.to(x.device)
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    others = counts[inverse] - 1  # R_i: other samples of the query's class
    max_r = int(others.max())
    depth = min(len(x) - 1, max(max(ks), max_r))
    positions = torch.arange(1, depth + 1, device=x.device)
    recall_hits = {int(k): torch.zeros((), device=x.device) for k in ks}  # a repeated K once
    map_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    rp_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    for start in range(0, len(x), chunk):
        stop = min(start + chunk, len(x))
        # cosine up to a positive per-row factor, which leaves each row's ranking unchanged
        sims = _matmul_t(x[start:stop], x).mul_(inv_norms)
        sims[torch.arange(stop - start), torch.arange(start, stop)] = -math.inf  # not itself
        neighbours = sims.topk(depth, dim=1).indices
        del sims
        valid = others[start:stop] > 0
        hits = (labels[neighbours] == labels[start:stop, None])[valid]
        r = others[start:stop][valid].unsqueeze(1)
        for k in recall_hits:
            recall_hits[k] += hits[:, :k].any(1).sum()
        within_r = hits & (positions <= r)
        precision_at_j = within_r.cumsum(1) / positions
        map_sum += ((precision_at_j * within_r).sum(1) / r.squeeze(1)).double().sum()
        rp_sum += (within_r.sum(1) / r.squeeze(1)).double().sum()
    num_queries = int((others > 0).sum())
    if num_queries == 0:
        raise ValueError("every class has a single sample: retrieval metrics are undefined")
    result = {f"recall@{k}": float(count) / num_queries for k, count in recall_hits.items()}
    result["map@r"] = float(map_sum) / num_queries
    result["r_precision"] = float(rp_sum) / num_queries
    if nmi:
        result["nmi"] = _nmi(labels, _kmeans(x, len(counts), seed=seed, row_scale=inv_norms))
    return result


# ----------------------------------------------------------------------------- geometry

def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Per-class mean features (K, d); K = num_classes or max label + 1."""
    k = int(labels.max()) + 1 if num_classes is None else num_classes
    sums = torch.zeros(k, features.shape[1], dtype=features.dtype).index_add_(0, labels.cpu(), features.cpu())
    counts = torch.bincount(labels.cpu(), minlength=k).clamp_min(1).unsqueeze(1)
    return sums / counts


def _angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    cos = F.cosine_similarity(a.double(), b.double(), dim=-1).clamp(-1, 1)
    return torch.rad2deg(torch.arccos(cos))


def angular_spread(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per class, the mean angle (degrees) between its features and its class mean: (K,)."""
    means = class_means(features, labels)
    angles = _angle_deg(features.cpu(), means[labels.cpu()])
    k = means.shape[0]
    sums = torch.zeros(k, dtype=angles.dtype).index_add_(0, labels.cpu(), angles)
    return sums / torch.bincount(labels.cpu(), minlength=k).clamp_min(1)


def pairwise_mean_angles(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Angles (K, K) in degrees between class means."""
    means = class_means(features, labels).double()
    return _angle_deg(means[:, None, :], means[None, :, :])


def min_angle_between_means(features: torch.Tensor, labels: torch.Tensor) -> float:
    angles = pairwise_mean_angles(features, labels)
    off_diagonal = ~torch.eye(len(angles), dtype=torch.bool)
    return float(angles[off_diagonal].min())


def mean_angle_between_means(features: torch.Tensor, labels: torch.Tensor) -> float:
    angles = pairwise_mean_angles(features, labels)
    off_diagonal = ~torch.eye(len(angles), dtype=torch.bool)
    return float(angles[off_diagonal].mean())


def alignment_to_targets(features: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Angle (degrees) between each class mean and its target direction (targets[k] for class k): (K,)."""
    means = class_means(features, labels)
    if targets.shape[0] < means.shape[0] or targets.shape[1] != means.shape[1]:
        raise ValueError(f"targets {tuple(targets.shape)} do not cover class means {tuple(means.shape)}")
    return _angle_deg(means, targets[: means.shape[0]].cpu())


def geometry_summary(features: torch.Tensor, labels: torch.Tensor,
                     targets: torch.Tensor | None = None) -> dict[str, float]:
    """The compactness / separation numbers the notebooks tabulate."""
    summary = {
        "spread_deg": float(angular_spread(features, labels).mean()),
        "min_angle_deg": min_angle_between_means(features, labels),
        "mean_angle_deg": mean_angle_between_means(features, labels),
    }
    if targets is not None:
        summary["max_angle_to_target_deg"] = float(alignment_to_targets(features, labels, targets).max())
    return summary



# ----------------------------------------------------------------------------- attention vs masks

def mask_cover(masks: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The share of each cell of an (h, w) grid covered by the object: masks (N, 1, H, W) bool
    -> (N, h, w) in [0, 1] (area averaging; H and W must be multiples of h and w)."""
    if masks.ndim != 4 or masks.shape[1] != 1:
        raise ValueError(f"masks must be (N, 1, H, W), got {tuple(masks.shape)}")
    h, w = int(shape[0]), int(shape[1])
    if masks.shape[2] % h or masks.shape[3] % w:
        raise ValueError(f"a {tuple(masks.shape[2:])} mask does not tile a {h}x{w} grid")
    return F.adaptive_avg_pool2d(masks.float(), (h, w))[:, 0]


def mass_inside(heat: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The share of each map's mass on the object: heat (N, h, w) >= 0 (a CAM, GSP's transport
    weights) against masks (N, 1, H, W) -> (N,) = Σ heat · cover / Σ heat. A uniform map gets
    the object's area (`mask_cover(...).mean`), the chance level."""
    if heat.ndim != 3 or (heat < 0).any():
        raise ValueError(f"heat must be (N, h, w) and non-negative, got {tuple(heat.shape)}")
    cover = mask_cover(masks.to(heat.device), heat.shape[1:])
    total = heat.flatten(1).sum(1)
    if (total <= 0).any():
        raise ValueError("a map without mass has no share inside the mask")
    return (heat * cover).flatten(1).sum(1) / total


def pointing_hits(heat: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The pointing game: whether each map's maximum (N, h, w) falls on a cell the object
    touches (cover > 0) -> (N,) bool. Chance: the share of cells the object touches."""
    cover = mask_cover(masks.to(heat.device), heat.shape[1:])
    peak = heat.flatten(1).argmax(1)
    return cover.flatten(1).gather(1, peak[:, None])[:, 0] > 0
