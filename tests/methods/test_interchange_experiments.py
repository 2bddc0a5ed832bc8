"""Tests of the interchange runner: settings, tiny real zoos (closed and open), the contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from labkit.methods import interchange_analysis as ia
from labkit.methods import interchange_experiments as ex


def test_settings_profiles_options_and_checks(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "quick")
    quick = ex.Settings.for_profile(arch="lenet5", seed=1)
    assert (quick.dim, quick.epochs, quick.train_per_class, quick.schedule) == (16, 3, 150, None)
    assert quick.arch_options == {} and quick.options == {}
    lab = ex.Settings.for_profile("lab", arch="vgg")
    assert lab == ex.Settings(arch="vgg") and lab.options == {"widths": (16, 32, 64)}
    # one options table for the zoo: a sweep over arch gives each architecture its own
    assert lab.replace(arch="mobilenet").options == {"widths": (16, 32, 64, 64)}
    assert lab.replace(arch="mlp").options == {}
    full = ex.Settings.for_profile("full", arch="resnet20")
    assert (full.dataset, full.optimizer, full.batch_size, full.unseen_per_class) == (
        "cifar10", "sgd", 128, 300)
    # settings from TOML (lists) equal those written in code (tuples)
    toml = ex.Settings.build(arch="vgg", arch_options={"vgg": {"widths": [16, 32, 64]},
                                                       "mobilenet": {"widths": [16, 32, 64, 64]}})
    assert toml == lab and toml.as_dict() == lab.as_dict()
    with pytest.raises(ValueError, match="unknown zoo architecture 'alexnet'"):
        ex.Settings(arch="alexnet")
    with pytest.raises(ValueError, match="kind must be"):
        ex.Settings(kind="half-open")
    with pytest.raises(ValueError, match="arch_options maps architectures"):
        ex.Settings(arch_options={"widths": (8, 16)})
    with pytest.raises(ValueError, match="epochs >= 0"):
        ex.Settings(epochs=-1)
    with pytest.raises(ValueError, match=r"unknown settings \['open_seen'\]"):
        ex.Settings.build(open_seen=7)
    assert ex.EXPERIMENT.grid() == {"arch": ("mlp", "lenet5"), "seed": (0, 1)}
    assert (ex.control_arch(), ex.open_epochs()) == ("mlp", 3)
    monkeypatch.setenv("LABKIT_PROFILE", "lab")
    assert ex.EXPERIMENT.grid()["arch"] == ("mlp", "lenet5", "mobilenet", "vgg")
    assert (ex.control_arch(), ex.open_epochs()) == ("lenet5", 3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Small quick-profile settings (40 train / 20 test digits per class), in a fresh cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LABKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("LABKIT_PROFILE", "quick")
    mp.setenv("LABKIT_DEVICE", "cpu")
    yield ex.Settings.for_profile(train_per_class=40, test_per_class=20, epochs=5, lr=5e-3,
                                  seen_per_class=30, unseen_per_class=15)
    mp.undo()


def test_tiny_real_zoo_trains_caches_and_beats_controls(tiny, monkeypatch):
    zoo = ex.build_zoo(tiny, progress=False)  # the quick grid: mlp, lenet5 x seeds 0, 1
    assert zoo.names == ["mlp-s0", "mlp-s1", "lenet5-s0", "lenet5-s1"]
    first = zoo.members[0]
    assert isinstance(first, ex.Result) and first.settings == tiny.replace(arch="mlp")
    assert first.train_emb.shape == (400, 16) and first.test_emb.shape == (200, 16)
    assert first.head_weight.shape == (10, 16) and len(first.history) == 5
    low, untrained = zoo.extras["low_dim"], zoo.extras["random_init"]
    assert (low.name, low.dim) == ("mlp-d4", 4)
    assert (untrained.name, untrained.history) == ("mlp-untrained", [])
    assert all(m.test_acc > 0.5 for m in zoo.members)  # chance is 0.1
    # the head's accuracy is what test_acc says
    logits = first.test_emb @ first.head_weight.T + first.head_bias
    assert first.test_acc == pytest.approx(float((logits.argmax(1) == zoo.test_labels)
                                                 .float().mean()))
    fitted = ia.retention_matrix(zoo)
    ctrl = ia.controls(zoo)
    assert fitted.median > 0.8 and ctrl.shuffled < 0.5 and ctrl.fitted_beats_controls
    assert ctrl.identity < fitted.median and ctrl.random_init < fitted.median
    low_form = ia.closed_form_matrix(zoo)
    names = low_form.names
    into_low = [low_form.agreement[i, names.index("mlp-d4")] for i in range(4)]
    assert low_form.exact[0, 1] and not low_form.exact[0, names.index("mlp-d4")]
    assert low_form.agreement[0, 1] == 1.0 and min(into_low) < 1.0
    assert ia.closed_form_checks(low_form) == {"exact_when_target_dim_ge_classes": True,
                                               "inexact_when_target_dim_lt_classes": True}

    summary = ex.summary([*zoo.members, low, untrained])
    assert summary.by == ("kind", "arch", "dim", "epochs")
    assert list(summary.stats) == [("closed", "mlp", 16, 5), ("closed", "lenet5", 16, 5),
                                   ("closed", "mlp", 4, 5), ("closed", "mlp", 16, 0)]
    mlp = summary.stats[("closed", "mlp", 16, 5)]["test_acc"]
    assert mlp.n == 2 and mlp.mean == pytest.approx(np.mean([m.test_acc for m in zoo.members[:2]]))
    text = ex.table(summary)
    assert "test_acc" in text and "recall@1" not in text and f"{100 * mlp.mean:.1f}" in text
    assert ex.claims(summary) == {}  # the paper's claims are about maps: interchange_analysis

    def no_training(*args, **kwargs):
        raise AssertionError("a cached member was retrained")

    monkeypatch.setattr(ex.EXPERIMENT, "train", no_training)
    again = ex.build_zoo(tiny, progress=False)
    assert torch.equal(again.members[3].test_emb, zoo.members[3].test_emb)
    assert again.extras["low_dim"].name == "mlp-d4"
    with pytest.raises(ValueError, match="closed members"):
        ex.build_zoo(tiny.replace(kind="open"))


def test_tiny_open_set_zoo(tiny):
    zoo = ex.build_open_set_zoo(tiny, progress=False)
    assert zoo.names == ["mlp-s0", "lenet5-s0"]
    member = zoo.members[0]
    assert member.settings == tiny.replace(arch="mlp", kind="open", epochs=3)
    assert member.head_weight is None and math.isnan(member.test_acc)
    assert 0 < member.metrics["recall@1"] <= 1 and "map@r" in member.metrics
    assert set(zoo.train_labels.tolist()) == set(range(7))  # seen classes
    assert set(zoo.test_labels.tolist()) == set(range(3))  # unseen, relabelled
    assert member.train_emb.shape == (210, 16) and member.test_emb.shape == (45, 16)
    res = ia.open_set_results(zoo)
    for row in res.pairs:
        assert row.metrics["eer"] < 0.5
        assert row.metrics["eer"] < res.shuffled_control.metrics["eer"] + 0.2
        assert 0 <= row.metrics["tar@far=0.01"] <= 1
    with pytest.raises(ValueError, match="no classification head"):
        _ = member.head
    text = ex.table(ex.summary(zoo.members))
    assert "recall@1" in text and "test_acc" not in text
