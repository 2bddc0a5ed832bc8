"""Tiny quick-profile runs of the notebook-01 experiment runners (seconds on a CPU)."""

import pytest
import torch

from labkit.core import config
from labkit.methods import reponet as rp
from labkit.methods import reponet_experiments as rx


@pytest.fixture(autouse=True)
def quick(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_PROFILE", "quick")
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("LABKIT_DEVICE", "cpu")
    with config.cpu_threads(1):
        yield


def test_run_config_validates():
    assert rx.run_config("cube", classes=10)["feat_dim"] == 4
    assert rx.run_config("simplex", classes=[3, 5, 7])["classes"] == [3, 5, 7]
    with pytest.raises(ValueError, match="d = 9"):
        rx.run_config("simplex", feat_dim=3)
    with pytest.raises(ValueError, match="feat_dim"):
        rx.run_config("learned")
    with pytest.raises(ValueError, match="unknown head"):
        rx.run_config("dodecahedron", feat_dim=3)
    with pytest.raises(ValueError, match="margin"):
        rx.run_config("learned", feat_dim=3, margin=True)
    with pytest.raises(ValueError, match="unknown config keys"):
        rx.run_config("simplex", epoch=3)


def test_quick_fixed_run_records_everything_and_keeps_vertices():
    cfg = rx.run_config("simplex", classes=4, epochs=2)
    result = rx.train(cfg, progress=False)
    history = result["history"]
    assert len(history.snapshots) == 3 and history.snapshot_epochs == [0, 1, 2]
    recipe = rx.recipe()
    assert history.snapshots[0].shape == (4 * recipe["probe_per_class"], 3)
    assert all({"nc1", "nc2", "nc3", "nc4"} <= set(row) for row in history.epochs)
    assert result["test_features"].shape == (4 * recipe["test_per_class"], 3)
    assert 0.0 <= result["accuracy"] <= 1.0
    assert torch.equal(result["model"].head.weight, rp.polytope_vertices("simplex", 4))
    assert result["head_params"] == {"trainable": 0, "fixed": 12}
    assert result["angle_to_direction"].shape == (4,)


def test_quick_center_and_margin_runs():
    center = rx.train(rx.run_config("center", classes=3, feat_dim=2), progress=False)
    assert center["head_params"]["trainable"] == 2 * 3 + 3 * 2  # linear head + centres
    margin = rx.train(rx.run_config("orthoplex", classes=4, margin=True), progress=False)
    # default m = phi / 2 (m = phi itself is degenerate, see run_config); orthoplex phi = 90 deg
    assert margin["model"].head.margin == pytest.approx(torch.pi / 4)
    full = rx.run_config("orthoplex", classes=4, margin=True, margin_fraction=1.0, epochs=0)
    assert rx.make_head(full).margin == pytest.approx(torch.pi / 2)


def test_recipe_moves_centres_by_the_paper_rule_at_every_step(monkeypatch):
    """Under the AdamW + cosine recipe the centres must still step by exactly -alpha Delta c_j
    (Wen et al.), up to the last step, where the schedule has decayed the network's lr to 0."""
    seen = []

    class Recording(rp.CenterLoss):
        def forward(self, features, labels):
            seen.append((features.detach().clone(), labels.clone(), self.centers.detach().clone()))
            return super().forward(features, labels)

    monkeypatch.setattr(rx.rp, "CenterLoss", Recording)
    result = rx.train(rx.run_config("center", classes=3, feat_dim=2, epochs=2, alpha=0.5),
                      progress=False)
    assert len(seen) > 10
    afters = [centres for _, _, centres in seen[1:]] + [result["centers"]]
    for (x, y, before), after in zip(seen, afters, strict=True):
        delta = torch.stack([(before[j] - x[y == j]).sum(0) / (1 + (y == j).sum())
                             for j in range(3)])
        assert torch.allclose(after, before - 0.5 * delta, atol=1e-5)
    fit = result["center_fit"]
    assert 0 <= fit["mean_angle_deg"] <= fit["max_angle_deg"] <= 180
    assert 0 <= fit["mean_distance"] <= fit["max_distance"]


def test_center_fit_hand_example():
    features = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1])
    centers = torch.tensor([[2.0, 2.0], [0.0, 5.0]])  # mean 0 = (2, 0): 45 deg, 2 away; mean 1 on c_1
    fit = rx.center_fit(features, labels, centers)
    assert fit["max_angle_deg"] == pytest.approx(45.0, abs=1e-4)
    assert fit["mean_angle_deg"] == pytest.approx(22.5, abs=1e-4)
    assert fit["max_distance"] == pytest.approx(3.0) and fit["mean_distance"] == pytest.approx(2.5)


def test_run_is_cached():
    cfg = rx.run_config("polygon", classes=3, epochs=1)
    first = rx.run(cfg, progress=False)
    second = rx.run(cfg, progress=False)
    assert "model" not in first and "state_dict" in first
    assert torch.equal(first["test_features"], second["test_features"])


def fake(label, head, d, acc, angles, margin=False):
    return {"config": {"head": head, "feat_dim": d, "margin": margin}, "label": label,
            "accuracy": acc, "angle_to_direction": torch.tensor(angles)}


def test_acceptance_logic():
    results = [fake("learned d=9", "learned", 9, 0.980, [0.0]),
               fake("simplex d=9", "simplex", 9, 0.975, [3.0, 9.0]),
               fake("learned d=4", "learned", 4, 0.970, [0.0]),
               fake("cube d=4", "cube", 4, 0.955, [2.0])]
    check = rx.acceptance(results)
    assert [row["passed"] for row in check["rows"]] == [True, False]  # cube: 1.5 points behind
    assert check["passed"] is False
    results[3]["accuracy"] = 0.968
    assert rx.acceptance(results)["passed"] is True
    results[1]["angle_to_direction"] = torch.tensor([3.0, 10.5])
    assert rx.acceptance(results)["passed"] is False
    with pytest.raises(ValueError, match="no learned run"):
        rx.acceptance(results[1:2])
    # the margin variants are checked separately, against the same learned runs
    with pytest.raises(ValueError, match="no margin"):
        rx.acceptance(results, margin=True)
    results.append(fake("simplex+margin d=9", "simplex", 9, 0.981, [4.0], margin=True))
    check = rx.acceptance(results, margin=True)
    assert [row["run"] for row in check["rows"]] == ["simplex+margin d=9"] and check["passed"]


def test_format_table():
    text = rx.format_table([{"run": "a", "acc": 1.5}, {"run": "bb", "acc": 10.25}])
    assert text.splitlines()[0].split() == ["run", "acc"]
    assert "10.25" in text


def test_experiment_sets():
    assert [rx.label(c) for c in rx.planar_configs()] == ["learned d=2", "polygon d=2", "center d=2"]
    spatial = rx.spatial_configs(baselines=True)
    assert [(c["head"], len(c["classes"]), c["feat_dim"]) for c in spatial] == [
        ("simplex", 4, 3), ("orthoplex", 6, 3), ("cube", 8, 3), ("learned", 8, 3), ("center", 8, 3)]
    comparison = rx.comparison_configs(margin=True, hadamard=True)
    assert [rx.label(c) for c in comparison] == [
        "learned d=9", "simplex d=9", "simplex+margin d=9", "learned d=5", "orthoplex d=5",
        "orthoplex+margin d=5", "learned d=4", "cube d=4", "cube+margin d=4", "hadamard d=16"]
