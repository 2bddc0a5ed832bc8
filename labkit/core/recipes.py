"""Ready-made, cached training runs shared by notebooks (the tour's softmax classifier, baselines)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from labkit.core import config
from labkit.core.cache import load_or_train
from labkit.core.data import EMBEDDED, ArrayDataset, load_dataset
from labkit.core.evaluate import model_accuracy
from labkit.core.models import Network, build_network, lenetpp_options
from labkit.core.train import History, fit


@dataclass
class ClassifierRun:
    model: Network
    history: History
    train: ArrayDataset
    test: ArrayDataset
    probe: ArrayDataset  # the fixed test subset whose embeddings were recorded every epoch

    @property
    def test_accuracy(self) -> float:
        return model_accuracy(self.model, self.test.images, self.test.labels)


def classifier_settings(**overrides) -> dict:
    """Default settings of a softmax classifier run for the active profile."""
    settings = {
        "dataset": "mnist5k", "arch": "lenetpp", "feat_dim": 2, "head": "linear", "classes": None,
        "epochs": config.pick(quick=6, lab=25, full=40), "batch_size": 64, "optimizer": "sgd",
        "lr": 0.02, "weight_decay": 5e-4, "schedule": "cosine", "seed": 0,
        "train_per_class": None, "probe_per_class": 50,
        "backbone": lenetpp_options() if "arch" not in overrides or overrides["arch"] == "lenetpp" else {},
    }
    unknown = set(overrides) - set(settings) - {"tag"}
    if unknown:
        raise ValueError(f"unknown classifier settings {sorted(unknown)}")
    settings.update(overrides)
    return settings


def _splits(s: dict):
    """(train, test) of s["dataset"]; the embedded sets are split by s["seed"], both halves
    from the same split (a test half of another seed's split overlaps this train half)."""
    split_seed = s["seed"] if s["dataset"] in EMBEDDED else 0
    return (load_dataset(s["dataset"], "train", seed=split_seed),
            load_dataset(s["dataset"], "test", seed=split_seed))


def train_classifier(settings: dict | None = None, *,
                     head_factory: Callable[[int, int], nn.Module] | None = None,
                     loss_factory: Callable[[int, int], nn.Module] | None = None) -> ClassifierRun:
    """Train (or load from the cache) a classifier described by `settings` (see classifier_settings).

    `head_factory(feat_dim, num_classes)` builds a custom head (settings["head"] then names it in
    the cache key); `loss_factory(feat_dim, num_classes)` builds an extra loss module called as
    `loss(embedding, labels)` and added to the cross-entropy, its parameters optimised with the
    network's (Center Loss needs its centres' own SGD instead: `reponet_experiments` does that).
    """
    s = classifier_settings() if settings is None else settings
    train, test = _splits(s)
    if s["classes"] is not None:
        train, test = train.subset_classes(s["classes"]), test.subset_classes(s["classes"])
    if s["train_per_class"]:
        train = train.k_per_class(s["train_per_class"], seed=s["seed"])
    probe = test.k_per_class(min(s["probe_per_class"], int(test.class_counts().min())), seed=0)
    k, channels, size = train.num_classes, train.image_shape[0], train.image_shape[1]

    def build() -> Network:
        head = head_factory(s["feat_dim"], k) if head_factory is not None else s["head"]
        net = build_network(s["arch"], channels, k, s["feat_dim"], head=head, image_size=size,
                            **s["backbone"])
        if loss_factory is not None:
            net.extra_loss = loss_factory(s["feat_dim"], k)  # saved with the weights
        return net

    def loss_fn(model: Network, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = model.forward_all(images)
        loss = F.cross_entropy(out.logits, labels)
        if getattr(model, "extra_loss", None) is not None:
            loss = loss + model.extra_loss(out.embedding.float(), labels)
        return loss

    def run(model: Network) -> History:
        return fit(model, loss_fn, train, epochs=s["epochs"], batch_size=s["batch_size"],
                   optimizer=s["optimizer"], lr=s["lr"], weight_decay=s["weight_decay"],
                   schedule=s["schedule"], probe=probe.images, seed=s["seed"],
                   eval_fn=lambda m: {"test_acc": model_accuracy(m, test.images, test.labels)})

    model, history = load_or_train("classifier", s, build, run)
    return ClassifierRun(model, history, train, test, probe)
