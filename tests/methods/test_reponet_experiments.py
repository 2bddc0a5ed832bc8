"""The notebook-01 runner: settings, tiny quick-profile runs (seconds on a CPU), and the
summary, claims and acceptance check on typed Results with known numbers."""

import math

import pytest
import torch

from labkit.core import config
from labkit.core.evaluate import embed
from labkit.core.models import lenetpp_options
from labkit.core.train import History
from labkit.methods import reponet as rp
from labkit.methods import reponet_experiments as rx


@pytest.fixture(autouse=True)
def quick(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_PROFILE", "quick")
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("LABKIT_DEVICE", "cpu")
    with config.cpu_threads(1):
        yield


def test_settings_validate_and_spell_one_run_one_way():
    assert rx.Settings(head="cube").dim == 4 and rx.Settings(head="hadamard").dim == 16
    # a fixed head's own d is stored as None: both spellings are one run (one cache key)
    assert rx.Settings(head="simplex", feat_dim=9) == rx.Settings()
    assert rx.Settings(head="simplex", feat_dim=9).as_dict()["feat_dim"] is None
    assert rx.Settings(head="hadamard", feat_dim=32).feat_dim == 32
    assert rx.Settings(head="learned", feat_dim=9).replace(head="simplex").feat_dim is None
    assert rx.Settings().replace(head="orthoplex").dim == 5  # no stale d from the simplex
    assert rx.Settings(classes=4).classes == (0, 1, 2, 3)
    assert rx.Settings(classes=[3, 5, 7]).classes == (3, 5, 7)  # TOML lists read as code's tuples
    toml = rx.Settings.build(backbone={"widths": [8, 16, 32], "kernel_size": 3})
    assert toml == rx.Settings.for_profile("quick", train_per_class=None, probe_per_class=30,
                                           test_per_class=None, epochs=10, batch_size=64)
    assert rx.Settings(head="simplex", margin=True, classes=4).label == "simplex+margin d=3"
    with pytest.raises(ValueError, match="d = 9"):
        rx.Settings(head="simplex", feat_dim=3)
    with pytest.raises(ValueError, match="feat_dim"):
        rx.Settings(head="learned")
    with pytest.raises(ValueError, match="unknown head"):
        rx.Settings(head="dodecahedron", feat_dim=3)
    with pytest.raises(ValueError, match="margin applies to fixed polytopes"):
        rx.Settings(head="learned", feat_dim=3, margin=True)
    with pytest.raises(ValueError, match="at least 2 classes"):
        rx.Settings(classes=[4])
    with pytest.raises(ValueError, match=r"unknown settings \['epoch'\]"):
        rx.Settings.build(epoch=3)


@pytest.mark.parametrize("profile", ["quick", "lab", "full"])
def test_profiles_use_the_profiles_lenetpp(profile, monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", profile)
    assert rx.Settings.for_profile().backbone == lenetpp_options()


def test_quick_fixed_run_records_everything_and_keeps_vertices():
    settings = rx.Settings.for_profile(classes=4, epochs=2)
    result = rx.EXPERIMENT.train(settings, False)
    history = result.history
    assert len(history.snapshots) == 3 and history.snapshot_epochs == [0, 1, 2]
    assert history.snapshots[0].shape == (4 * settings.probe_per_class, 3)
    assert all({"nc1", "nc2", "nc3", "nc4"} <= set(row) for row in history.epochs)
    assert result.test_features.shape == (4 * settings.test_per_class, 3)
    assert 0.0 <= result.metrics["accuracy"] <= 1.0
    model = result.model()
    assert torch.equal(model.head.weight, rp.polytope_vertices("simplex", 4))
    assert torch.equal(result.vertices, rp.polytope_vertices("simplex", 4))
    assert (result.metrics["head_trainable"], result.metrics["head_fixed"]) == (0, 12)
    assert result.angle_to_direction.shape == (4,)
    assert result.metrics["max_angle_to_target_deg"] == pytest.approx(
        float(result.angle_to_direction.max()))
    # the stored weights are the trained network's: the rebuilt model embeds the test set again
    _, test, _ = rx.load_data(settings)
    assert torch.allclose(embed(model, test.images), result.test_features, atol=1e-5)


def test_quick_center_and_margin_runs():
    center = rx.EXPERIMENT.train(rx.Settings.for_profile(head="center", classes=3, feat_dim=2),
                                 False)
    assert center.metrics["head_trainable"] == 2 * 3 + 3 * 2  # linear head + centres
    assert center.centers.shape == (3, 2) and isinstance(center.center_fit, rp.CenterFit)
    margin = rx.EXPERIMENT.train(rx.Settings.for_profile(head="orthoplex", classes=4,
                                                         margin=True), False)
    # default m = phi / 2 (m = phi itself is degenerate); orthoplex phi = 90 deg
    assert margin.model().head.margin == pytest.approx(math.pi / 4)
    full = rx.Settings.for_profile(head="orthoplex", classes=4, margin=True, margin_fraction=1.0)
    assert rx.build_model(full).head.margin == pytest.approx(math.pi / 2)


def test_recipe_moves_centres_by_the_paper_rule_at_every_step(monkeypatch):
    """Under the AdamW + cosine recipe the centres must still step by exactly -alpha Delta c_j
    (Wen et al.), up to the last step, where the schedule has decayed the network's lr to 0."""
    seen = []

    class Recording(rp.CenterLoss):
        def forward(self, features, labels):
            seen.append((features.detach().clone(), labels.clone(), self.centers.detach().clone()))
            return super().forward(features, labels)

    monkeypatch.setattr(rp, "CenterLoss", Recording)
    settings = rx.Settings.for_profile(head="center", classes=3, feat_dim=2, epochs=2, alpha=0.5)
    result = rx.EXPERIMENT.train(settings, False)
    assert len(seen) > 10
    afters = [centres for _, _, centres in seen[1:]] + [result.centers]
    for (x, y, before), after in zip(seen, afters, strict=True):
        delta = torch.stack([(before[j] - x[y == j]).sum(0) / (1 + (y == j).sum())
                             for j in range(3)])
        assert torch.allclose(after, before - 0.5 * delta, atol=1e-5)
    fit = result.center_fit
    assert 0 <= fit.mean_angle_deg <= fit.max_angle_deg <= 180
    assert 0 <= fit.mean_distance <= fit.max_distance


def test_run_is_cached():
    settings = rx.Settings.for_profile(head="polygon", classes=3, epochs=1)
    first = rx.run(settings)
    second = rx.run(rx.Settings.for_profile(head="polygon", classes=[0, 1, 2], feat_dim=2,
                                            epochs=1))
    assert isinstance(first, rx.Result) and first.settings == settings
    assert torch.equal(first.test_features, second.test_features)
    with pytest.raises(TypeError, match="run takes"):
        rx.run({"head": "polygon"})


def test_sweeps_are_the_notebooks_experiments(monkeypatch):
    ran = []
    monkeypatch.setattr(rx.EXPERIMENT, "run", lambda settings: ran.append(settings) or settings)
    assert [s.label for s in rx.sweep()] == [
        "learned d=9", "simplex d=9", "simplex+margin d=9", "learned d=5", "orthoplex d=5",
        "orthoplex+margin d=5", "learned d=4", "cube d=4", "cube+margin d=4"]
    assert {s.seed for s in rx.sweep(rx.Settings.for_profile(seed=2))} == {2}
    planar = rx.sweep(rx.Settings.for_profile(head="learned", feat_dim=2),
                      head=("learned", "polygon", "center"))
    assert [s.label for s in planar] == ["learned d=2", "polygon d=2", "center d=2"]
    # the same seed, data and recipe for every run of a sweep
    assert len({(s.seed, s.epochs, s.lr, s.classes) for s in planar}) == 1
    seeds = rx.sweep(rx.Settings.for_profile(head="cube", classes=8), seed=(0, 1))
    assert [(s.label, s.seed) for s in seeds] == [("cube d=3", 0), ("cube d=3", 1)]


def known(head, d, accuracy, angles=(1.0,), margin=False, seed=0, classes=10, spread=5.0):
    """A typed Result with known numbers (no training): what summary, claims and acceptance
    read."""
    settings = rx.Settings.for_profile(head=head, feat_dim=d, margin=margin, seed=seed,
                                       classes=classes)
    metrics = {name: 0.0 for name in rx.EXPERIMENT.metrics}
    metrics.update(accuracy=accuracy, spread_deg=spread, max_angle_to_target_deg=max(angles))
    empty = torch.zeros(0)
    return rx.Result(settings, metrics, History(), empty, empty, empty, torch.tensor(angles),
                     empty, empty, 0.0, None, None, {})


def test_summary_table_and_claims_pair_fixed_heads_with_learned_ones_at_the_same_d():
    results = [known("learned", 9, 0.970, seed=0), known("learned", 9, 0.980, seed=1),
               known("simplex", 9, 0.975, seed=0), known("simplex", 9, 0.978, seed=1),
               known("simplex", 9, 0.990, margin=True, seed=0),
               known("simplex", 9, 0.992, margin=True, seed=1),
               known("learned", 4, 0.950), known("cube", 4, 0.940)]
    summary = rx.summary(results)
    assert list(summary.stats) == [("learned", 10, 9), ("simplex", 10, 9),
                                   ("simplex+margin", 10, 9), ("learned", 10, 4), ("cube", 10, 4)]
    assert summary.stats[("learned", 10, 9)]["accuracy"].mean == pytest.approx(0.975)
    lines = rx.table(summary).splitlines()
    assert lines[0].split()[:5] == ["run", "K", "d", "seeds", "acc"]
    assert lines[2].split()[:6] == ["learned", "10", "9", "2", "97.5", "±"]
    assert lines[-1].split()[:5] == ["cube", "10", "4", "1", "94.0"]
    claims = rx.claims(summary)
    simplex = claims["simplex vs learned"]["10, 9"]
    assert (simplex.gain, simplex.wins, simplex.seeds) == (pytest.approx(0.0015), 1, 2)
    assert claims["simplex+margin vs learned"]["10, 9"].wins == 2
    cube = claims["cube vs learned"]
    assert list(cube) == ["10, 4"] and cube["10, 4"].gain == pytest.approx(-0.01)
    assert "orthoplex vs learned" not in claims  # no such runs: no claim


def test_acceptance_bounds_the_gap_and_the_angles():
    results = [known("learned", 9, 0.980), known("simplex", 9, 0.975, [3.0, 9.0]),
               known("learned", 4, 0.970), known("cube", 4, 0.955, [2.0])]
    check = rx.acceptance(results)
    assert [row.passed for row in check.rows] == [True, False]  # cube: 1.5 points behind
    assert check.rows[1].gap_points == pytest.approx(1.5) and not check.passed
    results[3] = known("cube", 4, 0.968, [2.0])
    assert rx.acceptance(results).passed
    results[1] = known("simplex", 9, 0.975, [3.0, 10.5])
    check = rx.acceptance(results)
    assert not check.passed and check.rows[0].max_angle_to_vertex == pytest.approx(10.5)
    with pytest.raises(ValueError, match="no learned run"):
        rx.acceptance(results[1:2])
    with pytest.raises(ValueError, match="no learned run"):  # the rival must share the seed
        rx.acceptance([known("learned", 9, 0.98, seed=1), known("simplex", 9, 0.98)])
    # the margin variants are checked separately, against the same learned runs
    with pytest.raises(ValueError, match="no margin"):
        rx.acceptance(results, margin=True)
    results.append(known("simplex", 9, 0.981, [4.0], margin=True))
    check = rx.acceptance(results, margin=True)
    assert [row.run for row in check.rows] == ["simplex+margin d=9"] and check.passed
    lines = rp.acceptance_table([check]).splitlines()
    assert lines[0].split()[:3] == ["run", "seed", "acc"]
    assert lines[2].split() == ["simplex+margin", "d=9", "0", "98.10", "98.00", "-0.10",
                                "4.00", "5.00", "True"]
