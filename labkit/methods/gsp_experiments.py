"""GSP experiments: GAP vs GSP (with and without the zero-shot loss) on a zero-shot split.

Every run trains a backbone + pooling neck with a pytorch-metric-learning loss on the training
classes and evaluates retrieval (recall@K, MAP@R, NMI via `labkit.core.evaluate`) on the unseen
test classes. "gap" is the same network with `GSP(mu=1)`, which is exactly global average
pooling followed by the 1x1 projection, so the comparison isolates the pooling. The runner
follows `labkit.core.experiment` (`Settings`, `run`, `sweep`, `summary`, `table`, `claims`).
The protocol, its defaults per profile and how it departs from the authors' are in
docs/methods/gsp.md; what the stored runs showed is in docs/findings/04_generalized_sum_pooling.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from labkit.core import config, experiment
from labkit.core.data import ArrayDataset, MPerClassBatches, class_disjoint_split
from labkit.core.evaluate import embed, retrieval_metrics
from labkit.core.experiment import Comparison
from labkit.core.models import Network, build_backbone, map_shape
from labkit.core.train import fit
from labkit.methods.gsp import GSP, GSPMetricLoss, ZeroShotPredictionLoss, prime_prototypes

LOSSES = ("contrastive", "triplet", "multi_similarity", "proxy_anchor")
VARIANTS = ("gap", "gsp", "gsp+zsr")


@dataclass(frozen=True)
class Settings(experiment.Settings):
    """One GSP run. Defaults: the lab profile (mnist5k digits 0-4 train, 5-9 test, a slim VGG
    whose last conv map stays 7x7); `PROFILES` holds what quick and full change."""

    loss: str = "contrastive"
    variant: str = "gsp"  # "gap" (GSP with mu = 1), "gsp", "gsp+zsr"
    seed: int = 0
    dataset: str = "mnist5k"
    arch: str = "vgg"
    widths: tuple[int, ...] | None = (8, 16, 32)
    dim: int = 64
    num_prototypes: int = 16  # K
    epochs: int = 2
    batches_per_epoch: int = 40
    m: int = 8  # samples per class in a batch
    classes_per_batch: int = 4
    train_per_class: int | None = None  # None: every training image
    test_per_class: int | None = None
    lr: float = 1e-3
    mu: float = 0.3  # transport ratio
    gamma: float | None = None  # inverse temperature; None: 5, or 0.5 for proxy losses
    zsr_weight: float = 0.1
    zsr_lambda: float = 0.05
    zsr_scale: float = 9.5

    PROFILES: ClassVar = {
        "quick": dict(widths=(8, 16, 16), dim=32, num_prototypes=8, epochs=1,
                      batches_per_epoch=3, train_per_class=40, test_per_class=30),
        "full": dict(dataset="cifar100", arch="resnet18", widths=None, dim=512,
                     num_prototypes=64, epochs=40, batches_per_epoch=200, m=4,
                     classes_per_batch=32, lr=1e-4),
    }

    def check(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose from {', '.join(VARIANTS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose from {', '.join(LOSSES)}")

    @property
    def transport_gamma(self) -> float:
        """γ of the layer: the setting, else 5, or 0.5 for proxy-anchor (the authors' script)."""
        if self.gamma is not None:
            return float(self.gamma)
        return 0.5 if self.loss == "proxy_anchor" else 5.0

    @property
    def pooling_mu(self) -> float:
        """μ of the layer: 1 (exactly GAP) for the "gap" variant."""
        return 1.0 if self.variant == "gap" else float(self.mu)


@dataclass
class Result(experiment.Result):
    """A trained run: retrieval metrics on the unseen classes, per-epoch history, weights."""

    settings: Settings
    metrics: dict[str, float]
    history: list[dict[str, float]]
    image_shape: tuple[int, int, int]
    state_dict: dict[str, torch.Tensor]

    def model(self) -> Network:
        """The trained network, rebuilt (eval mode, CPU)."""
        c, h, _ = self.image_shape
        model = build_model(self.settings, c, h)
        model.load_state_dict(self.state_dict)
        return model.eval()


def dml_loss(name: str, num_classes: int, dim: int) -> nn.Module:
    """A pytorch-metric-learning loss with the hyper-parameters of the authors' configs."""
    from pytorch_metric_learning import losses

    if name == "contrastive":
        return losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0)
    if name == "triplet":
        return losses.TripletMarginLoss(margin=0.2)
    if name == "multi_similarity":
        return losses.MultiSimilarityLoss(alpha=2.0, beta=40.0, base=0.5)
    if name == "proxy_anchor":
        return losses.ProxyAnchorLoss(num_classes, dim, margin=0.1, alpha=32)
    raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")


class GSPTrainLoss(nn.Module):
    """``fit``'s loss: backbone -> neck (histograms when ZSR is on) -> L2-normalise -> loss."""

    def __init__(self, loss: GSPMetricLoss) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, model: Network, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.from_outputs(self.outputs(model, images), labels)

    def outputs(self, model: Network, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What the loss needs per sample: (unit embeddings (B, d),) and, with the zero-shot
        loss, the prototype histograms (B, K)."""
        fmap = model.backbone(images)
        if self.loss.zsr is None:
            return (F.normalize(model.neck(fmap), dim=1),)
        out = model.neck(fmap, return_maps=True)
        return F.normalize(out.pooled, dim=1), out.histogram

    def from_outputs(self, outputs: tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
        """The loss of a batch's `outputs` (a distributed run gathers them from all ranks)."""
        return self.loss(outputs[0], labels, *outputs[1:])


def load_split(settings: Settings) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) with disjoint classes for the dataset, subsampled per class if asked."""
    return class_disjoint_split(settings.dataset, train_per_class=settings.train_per_class,
                                test_per_class=settings.test_per_class, seed=settings.seed)


def build_model(settings: Settings, in_channels: int, image_size: int) -> Network:
    """Backbone (conv map kept at full resolution) + GSP neck (μ = 1 for the GAP variant)."""
    options = ({"widths": tuple(settings.widths), "pool_last": False}
               if settings.arch == "vgg" else {})
    backbone = build_backbone(settings.arch, in_channels, image_size, **options)
    channels = map_shape(backbone, in_channels, image_size)[0]
    neck = GSP(channels, settings.dim, settings.num_prototypes, mu=settings.pooling_mu,
               gamma=settings.transport_gamma)
    return Network(backbone, neck, head=None)


def make_training(settings: Settings, model: Network, train: ArrayDataset, device: torch.device
                  ) -> tuple[GSPTrainLoss, list[dict[str, Any]], MPerClassBatches]:
    """(loss_fn, param_groups, batch_sampler); moves `model` to `device` and sets its
    prototypes. `run` and `labkit train` both build their training here."""
    dml = dml_loss(settings.loss, train.num_classes, settings.dim)
    zsr = None
    if settings.variant == "gsp+zsr":
        zsr = ZeroShotPredictionLoss(train.num_classes, settings.dim, lam=settings.zsr_lambda,
                                     scale=settings.zsr_scale, split="halves")
    loss_fn = GSPTrainLoss(GSPMetricLoss(dml, zsr, weight=settings.zsr_weight))
    groups = [{"params": list(model.parameters())}]
    if list(dml.parameters()):  # proxies learn 100x faster, as in the authors' configs
        groups.append({"params": list(dml.parameters()), "lr": 100 * settings.lr})
    if zsr is not None:
        groups.append({"params": list(zsr.parameters())})
    sampler = MPerClassBatches(train.labels, settings.m, settings.classes_per_batch,
                               settings.batches_per_epoch)
    # Prototypes: k-centres of a batch's local features, taken before training starts. The
    # sampler draws from numpy's global generator, which `fit` seeds again before its first step.
    model.to(device)
    prime_prototypes(model, train.images[next(iter(sampler))])
    return loss_fn, groups, sampler


def evaluate(settings: Settings, model: Network, test: ArrayDataset,
             history: list[dict[str, float]]) -> Result:
    """The run's `Result`: retrieval on the unseen classes, and the weights on the CPU."""
    metrics = retrieval_metrics(embed(model, test.images), test.labels.cpu(), seed=settings.seed)
    return Result(settings, metrics, list(history), tuple(test.image_shape),
                  {k: v.cpu() for k, v in model.state_dict().items()})


class GSPExperiment(experiment.RetrievalExperiment):
    """GAP vs GSP vs GSP+ZSR per loss, over seeds."""

    cache_name = "gsp_run"
    settings_type = Settings
    losses, variants = LOSSES, VARIANTS
    comparisons = (Comparison("gsp > gap", "variant", "gsp", "gap", "recall@1"),
                   Comparison("gsp+zsr > gap", "variant", "gsp+zsr", "gap", "recall@1"))

    def train(self, settings: Settings, progress: bool) -> Result:
        config.seed_everything(settings.seed)
        train, test = load_split(settings)
        c, h, _ = train.image_shape
        model = build_model(settings, c, h)
        device = config.get_device()
        loss_fn, groups, sampler = make_training(settings, model, train, device)
        history = fit(model, loss_fn, train, epochs=settings.epochs, optimizer="adam",
                      lr=settings.lr, param_groups=groups, batch_sampler=sampler,
                      device=device, seed=settings.seed, progress=progress)
        return evaluate(settings, model, test, history.epochs)


EXPERIMENT = GSPExperiment()
run, sweep, summary, table, claims = experiment.bind(EXPERIMENT)
