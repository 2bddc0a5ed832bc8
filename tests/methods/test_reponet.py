"""Tests for labkit.methods.reponet: exact polytope geometry, the fixed classifier's invariants,
the margin variant, Center Loss's update rule, neural-collapse measures and tiny training runs."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit.methods import reponet as rp

TOL = 1e-12


pytestmark = pytest.mark.usefixtures("one_thread")


def pairwise_cos(w: torch.Tensor) -> torch.Tensor:
    w = w.double()
    return (w @ w.T) / (w.norm(dim=1)[:, None] * w.norm(dim=1)[None, :])


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    return m[~torch.eye(m.shape[0], dtype=torch.bool)]


# ----------------------------------------------------------------------------- geometry

@pytest.mark.parametrize("k", [2, 3, 4, 10, 100])
def test_simplex_exact_geometry(k):
    w = rp.polytope_vertices("simplex", k, dtype=torch.float64)
    d = k - 1
    assert w.shape == (k, d)
    assert torch.allclose(w.norm(dim=1), torch.ones(k, dtype=torch.float64), atol=TOL)
    assert torch.allclose(w.mean(0), torch.zeros(d, dtype=torch.float64), atol=TOL)
    cos = off_diagonal(pairwise_cos(w))
    assert torch.allclose(cos, torch.full_like(cos, -1.0 / d), atol=TOL)


def test_simplex_known_angles():
    for k, degrees in [(4, 109.4712), (10, 96.3794), (100, 90.5787)]:
        phi = math.degrees(rp.min_vertex_angle(rp.polytope_vertices("simplex", k)))
        assert phi == pytest.approx(degrees, abs=1e-3)


@pytest.mark.parametrize("k", [2, 3, 5, 8, 10, 16, 100])
def test_cube_exact_geometry_and_spare_vertices(k):
    w = rp.polytope_vertices("cube", k, dtype=torch.float64)
    d = max(1, math.ceil(math.log2(k)))
    assert w.shape == (2**d, d)  # spare vertices are returned, never an error
    assert torch.allclose(w.abs(), torch.full_like(w, 1 / math.sqrt(d)), atol=TOL)
    assert torch.allclose(w.mean(0), torch.zeros(d, dtype=torch.float64), atol=TOL)
    cos = off_diagonal(pairwise_cos(w))
    assert cos.max().item() == pytest.approx(1 - 2 / d, abs=TOL)  # nearest neighbours
    assert cos.max().item() < 1 - 1e-9  # all vertices distinct
    # Hamming distance h <-> cos = 1 - 2h/d for every pair
    signs = torch.sign(w)
    hamming = (signs[:, None, :] != signs[None, :, :]).sum(-1).double()
    assert torch.allclose(pairwise_cos(w), 1 - 2 * hamming / d, atol=TOL)


def test_cube_official_ordering():
    w = rp.polytope_vertices("cube", 8, dtype=torch.float64) * math.sqrt(3)
    assert w[0].tolist() == [1, 1, 1]
    assert w[1].tolist() == [-1, 1, 1]  # bit 0 of t=1 is set -> coordinate 0 is -1
    assert w[6].tolist() == [1, -1, -1]


@pytest.mark.parametrize("k", [2, 3, 6, 7, 10])
def test_orthoplex_angles_are_90_or_180(k):
    w = rp.polytope_vertices("orthoplex", k, dtype=torch.float64)
    d = math.ceil(k / 2)
    assert w.shape == (2 * d, d)
    cos = off_diagonal(pairwise_cos(w))
    assert bool(((cos.abs() < TOL) | ((cos + 1).abs() < TOL)).all())
    # exactly one antipode per vertex
    assert ((pairwise_cos(w) + 1).abs() < TOL).sum(1).tolist() == [1] * (2 * d)
    assert torch.equal(w[:d], torch.eye(d, dtype=torch.float64))


def test_polygon():
    w = rp.polytope_vertices("polygon", 5, dtype=torch.float64)
    assert w.shape == (5, 2)
    cos_next = (w * w.roll(-1, 0)).sum(1)
    assert torch.allclose(cos_next, torch.full((5,), math.cos(2 * math.pi / 5), dtype=torch.float64))
    assert torch.allclose(w[0], torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_sylvester_hadamard():
    h = rp.sylvester_hadamard(16, torch.float64)
    assert torch.equal(h @ h.T, 16 * torch.eye(16, dtype=torch.float64))
    assert set(h.unique().tolist()) == {-1.0, 1.0}
    with pytest.raises(ValueError, match="power of two"):
        rp.sylvester_hadamard(12)


def test_hadamard_rows_orthogonal_and_not_centred():
    w = rp.polytope_vertices("hadamard", 10, dtype=torch.float64)
    assert w.shape == (10, 16)
    assert torch.allclose(w @ w.T, torch.eye(10, dtype=torch.float64), atol=TOL)
    assert torch.allclose(w[0], torch.full((16,), 0.25, dtype=torch.float64))  # row 0 = all ones
    w32 = rp.polytope_vertices("hadamard", 10, 32, dtype=torch.float64)
    assert torch.allclose(w32 @ w32.T, torch.eye(10, dtype=torch.float64), atol=TOL)
    w12 = rp.polytope_vertices("hadamard", 10, 12, dtype=torch.float64)  # truncated H_16
    assert w12.shape == (10, 12)
    assert torch.allclose(w12.norm(dim=1), torch.ones(10, dtype=torch.float64), atol=TOL)


def test_polytope_dims():
    assert [rp.polytope_dim(kind, 10) for kind in rp.KINDS] == [9, 4, 5, 2, 16]


@pytest.mark.parametrize("call, message", [
    (lambda: rp.polytope_vertices("icosahedron", 10), "unknown polytope kind"),
    (lambda: rp.polytope_vertices("simplex", 1), "num_classes >= 2"),
    (lambda: rp.polytope_vertices("cube", 0), "num_classes >= 2"),
    (lambda: rp.polytope_vertices("simplex", 10, 5), "d = 9"),
    (lambda: rp.polytope_vertices("cube", 10, 3), "d = 4"),
    (lambda: rp.polytope_vertices("polygon", 10, 3), "d = 2"),
    (lambda: rp.polytope_vertices("hadamard", 10, 4), "feat_dim >= 10"),
    (lambda: rp.FixedClassifier("orthoplex", 10, 4), "d = 5"),
    (lambda: rp.FixedClassifier("simplex", 4, margin="large"), "margin"),
    (lambda: rp.FixedClassifier("simplex", 4, margin=4.0), "margin"),
    (lambda: rp.CenterLoss(1, 2), "num_classes >= 2"),
])
def test_impossible_configurations_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- fixed classifier

def test_fixed_classifier_is_a_buffer_and_logits_are_dot_products():
    head = rp.FixedClassifier("cube", 10)
    assert list(head.parameters()) == []
    assert "weight" in head.state_dict()
    assert head.num_outputs == 16 and head.feat_dim == 4
    f = torch.randn(7, 4)
    assert torch.allclose(head(f), f @ rp.polytope_vertices("cube", 10).T)
    with pytest.raises(ValueError, match="expects d = 4"):
        head(torch.randn(7, 3))


@pytest.mark.parametrize("kind", ["simplex", "cube", "orthoplex", "polygon"])
def test_feature_on_a_vertex_is_classified_as_that_class(kind):
    head = rp.FixedClassifier(kind, 6)
    pred = head(3.0 * head.class_directions).argmax(1)
    assert pred.tolist() == list(range(6))


def test_fixed_weights_bit_identical_after_training_with_momentum_and_weight_decay():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 3), rp.FixedClassifier("simplex", 4))
    before = net[1].weight.clone()
    version = net[1].weight._version
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
    for opt in (torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1),
                torch.optim.AdamW(net.parameters(), lr=0.1, weight_decay=0.5)):
        for _ in range(50):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    assert torch.equal(net[1].weight, before)
    assert net[1].weight._version == version  # never written in place, not even in forward
    assert net[1].weight.grad is None


def test_fixed_logits_gradient_matches_finite_differences():
    w = rp.polytope_vertices("orthoplex", 6, dtype=torch.float64)
    f = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: rp.fixed_logits(x, w), (f,))


def test_margin_max_is_the_neighbour_angle():
    for kind, k in [("simplex", 4), ("orthoplex", 6), ("cube", 8), ("polygon", 10)]:
        head = rp.FixedClassifier(kind, k, margin="max")
        expected = {"simplex": math.acos(-1 / 3), "orthoplex": math.pi / 2,
                    "cube": math.acos(1 / 3), "polygon": 2 * math.pi / 10}[kind]
        assert head.margin == pytest.approx(expected, abs=1e-6)


def test_margin_max_for_two_antipodal_classes_is_pi():
    head = rp.FixedClassifier("simplex", 2, margin="max")
    assert head.margin == pytest.approx(math.pi)
    f = torch.randn(16, 1, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 2, (16,))
    loss = head.loss(f, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f.grad).all()


def test_angular_margin_logits_target_and_continuation():
    w = rp.polytope_vertices("polygon", 4, dtype=torch.float64)  # w_0 = (1, 0)
    m, s = 0.5, 10.0
    thetas = torch.linspace(0.01, math.pi - 0.01, 200, dtype=torch.float64)
    f = torch.stack([thetas.cos(), thetas.sin()], 1) * 3.0
    labels = torch.zeros(200, dtype=torch.long)
    logits = rp.angular_margin_logits(f, w, labels, m, s)
    target = logits[:, 0] / s
    inside = thetas <= math.pi - m
    assert torch.allclose(target[inside], torch.cos(thetas[inside] + m), atol=1e-9)
    assert torch.allclose(target[~inside], thetas[~inside].cos() - 1 + math.cos(m), atol=1e-9)
    assert bool((target.diff() < 0).all())  # monotone: larger angle, smaller target logit
    # non-target logits are plain scaled cosines
    assert torch.allclose(logits[:, 1:], s * F.normalize(f, dim=1) @ w[1:].T, atol=1e-9)
    # margin 0: plain cosine softmax
    zero = rp.angular_margin_logits(f, w, labels, 0.0, s)
    assert torch.allclose(zero, s * F.normalize(f, dim=1) @ w.T, atol=1e-6)


def test_margin_loss_gradient_matches_finite_differences():
    torch.manual_seed(1)
    w = rp.polytope_vertices("simplex", 4, dtype=torch.float64)
    f = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    assert torch.autograd.gradcheck(lambda x: rp.margin_cross_entropy(x, w, y, 1.2, 8.0), (f,))


def test_margin_classifier_forward_is_scaled_cosine():
    head = rp.FixedClassifier("orthoplex", 6, margin=0.3, scale=5.0)
    f = torch.randn(4, 3) * 7
    assert torch.allclose(head(f), 5.0 * F.normalize(f, dim=1) @ head.weight.T, atol=1e-6)
    y = torch.tensor([0, 1, 2, 3])
    assert head.loss(f, y) > F.cross_entropy(head(f), y)  # the margin makes the loss harder


# ----------------------------------------------------------------------------- Hadamard baseline

def test_hadamard_classifier():
    torch.manual_seed(0)
    head = rp.HadamardClassifier(10)
    assert head.feat_dim == 16
    assert parameter_names(head) == {"scale", "bias"}
    assert rp.parameter_counts(head) == {"trainable": 11, "fixed": 160}
    assert head.scale.item() == pytest.approx(1 / math.sqrt(10))
    f = torch.randn(5, 16)
    expected = head.scale * F.normalize(f, dim=1) @ rp.sylvester_hadamard(16)[:10].T + head.bias
    assert torch.allclose(head(f), expected, atol=1e-6)
    assert torch.allclose(head(10 * f), head(f), atol=1e-5)  # features are normalised


def parameter_names(module):
    return {name for name, _ in module.named_parameters()}


# ----------------------------------------------------------------------------- Center Loss

def paper_delta(x, y, c):
    delta = torch.zeros_like(c)
    for j in range(c.shape[0]):
        mask = y == j
        delta[j] = (c[j] - x[mask]).sum(0) / (1 + mask.sum())
    return delta


def test_center_loss_value_and_feature_gradient():
    torch.manual_seed(0)
    x = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 3])
    c = torch.randn(5, 3, dtype=torch.float64)
    loss = rp.center_loss(x, y, c, lam=0.3)
    assert loss.item() == pytest.approx(0.3 * 0.5 * ((x - c[y]) ** 2).sum().item() / 9, rel=1e-12)
    assert torch.autograd.gradcheck(lambda v: rp.center_loss(v, y, c, 0.3), (x,))


@pytest.mark.parametrize("lam", [0.0, 0.01, 1.0])
def test_center_update_is_the_paper_rule_for_any_lambda(lam):
    torch.manual_seed(0)
    crit = rp.CenterLoss(5, 3, lam=lam, alpha=0.5).double()
    x = torch.randn(9, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 3])  # class 4 absent: its centre must not move
    c0 = crit.centers.detach().clone()
    opt = crit.optimizer()
    opt.zero_grad()
    crit(x, y).backward()
    assert torch.allclose(crit.centers.grad, paper_delta(x, y, c0), atol=1e-12)
    opt.step()
    assert torch.allclose(crit.centers.detach(), c0 - 0.5 * paper_delta(x, y, c0), atol=1e-12)
    assert torch.equal(crit.centers.detach()[4], c0[4])


def test_center_update_converges_to_class_means():
    torch.manual_seed(0)
    crit = rp.CenterLoss(3, 2, lam=0.01, alpha=0.5)
    x, y = torch.randn(30, 2) + 5, torch.arange(30) % 3
    opt = crit.optimizer()
    for _ in range(200):
        opt.zero_grad()
        crit(x, y).backward()
        opt.step()
    means = torch.stack([x[y == j].mean(0) for j in range(3)])
    assert torch.allclose(crit.centers.detach(), means, atol=1e-4)


# ----------------------------------------------------------------------------- measures

def test_parameter_counts_of_heads():
    assert rp.parameter_counts(rp.FixedClassifier("simplex", 10)) == {"trainable": 0, "fixed": 90}
    assert rp.parameter_counts(rp.FixedClassifier("cube", 10)) == {"trainable": 0, "fixed": 64}
    assert rp.parameter_counts(nn.Linear(9, 10, bias=False)) == {"trainable": 90, "fixed": 0}
    assert rp.parameter_counts(rp.CenterLoss(10, 2)) == {"trainable": 20, "fixed": 0}


def test_neural_collapse_zero_at_perfect_collapse():
    w = rp.polytope_vertices("simplex", 5, dtype=torch.float64)
    labels = torch.arange(5).repeat(4)
    features = 3.0 * w[labels]
    nc = rp.neural_collapse(features, labels, weight=w, predictions=labels)
    for key in ("nc1", "nc2", "nc2_equinorm", "nc2_equiangular", "nc3", "nc4"):
        assert nc[key] == pytest.approx(0.0, abs=1e-9), key


def test_nc1_closed_form_two_classes():
    s = 0.3
    features = torch.tensor([[-1 - s], [-1 + s], [1 - s], [1 + s]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    assert rp.neural_collapse(features, labels)["nc1"] == pytest.approx(s**2 / 2, rel=1e-12)


def test_neural_collapse_invariances_and_non_etf():
    torch.manual_seed(0)
    labels = torch.arange(4).repeat(10)
    w = rp.polytope_vertices("orthoplex", 4, dtype=torch.float64)  # a square: not a simplex ETF
    features = w[labels] + 0.1 * torch.randn(40, 2, dtype=torch.float64)
    nc = rp.neural_collapse(features, labels, weight=w)
    rot = torch.linalg.qr(torch.randn(2, 2, dtype=torch.float64))[0]
    nc_rot = rp.neural_collapse(5.0 * features @ rot + 2.0, labels, weight=w @ rot)
    assert nc["nc2"] > 0.1  # 4 points in the plane cannot be a 3-simplex
    for key in ("nc1", "nc2"):
        assert nc_rot[key] == pytest.approx(nc[key], rel=1e-9)
    # NC3 against the wrong rows is worse than against the right ones
    assert rp.neural_collapse(features, labels, weight=w.roll(1, 0))["nc3"] > nc["nc3"] + 0.5


def test_nc4_counts_disagreements_with_nearest_mean():
    labels = torch.tensor([0, 0, 1, 1])
    features = torch.tensor([[-1.0], [-0.5], [0.5], [1.0]])
    predictions = torch.tensor([0, 1, 1, 1])
    assert rp.neural_collapse(features, labels, predictions=predictions)["nc4"] == 0.25
    with pytest.raises(ValueError, match="every class"):
        rp.neural_collapse(features, torch.tensor([0, 0, 2, 2]))


# ----------------------------------------------------------------------------- tiny training runs

def blobs(num_classes, dim=10, per_class=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = 3.0 * torch.randn(num_classes, dim, generator=g)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return centers[labels] + torch.randn(len(labels), dim, generator=g), labels


def train(model, loss_fn, x, y, steps=150, lr=0.05, weight_decay=0.0):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(x, y).backward()
        opt.step()


@pytest.mark.parametrize("kind, k", [("simplex", 4), ("orthoplex", 6), ("cube", 5)])
def test_fixed_polytope_training_puts_class_means_on_vertices(kind, k):
    torch.manual_seed(0)
    x, y = blobs(k)
    head = rp.FixedClassifier(kind, k)
    body = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, head.feat_dim))

    def angles():
        f = body(x).detach()
        means = torch.stack([f[y == j].mean(0) for j in range(k)])
        cos = F.cosine_similarity(means, head.class_directions, dim=1)
        return torch.rad2deg(torch.acos(cos.clamp(-1, 1)))

    before = angles()
    # weight decay bounds ||f||, so the loss keeps improving by turning f towards w_y
    train(body, lambda a, b: head.loss(body(a), b), x, y, steps=300, lr=0.1, weight_decay=1e-2)
    after = angles()
    assert (head(body(x)).argmax(1) == y).float().mean() > 0.97
    assert before.mean() > 30.0 and after.mean() < 12.0 and after.max() < 25.0


def test_margin_makes_features_more_compact_than_plain_softmax():
    x, y = blobs(4, per_class=50, seed=1)

    def spread(margin):
        torch.manual_seed(0)
        head = rp.FixedClassifier("simplex", 4, margin=margin, scale=8.0)
        body = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
        train(body, lambda a, b: head.loss(body(a), b), x, y, steps=200)
        f = F.normalize(body(x).detach(), dim=1)
        cos = (f * head.class_directions[y]).sum(1).clamp(-1, 1)
        return torch.rad2deg(torch.acos(cos)).mean().item()

    plain, maximal = spread(None), spread("max")
    assert maximal < 0.5 * plain


def test_center_loss_shrinks_intra_class_spread():
    x, y = blobs(4, per_class=50, seed=2)

    def spread(lam):
        torch.manual_seed(0)
        body = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
        head = nn.Linear(2, 4, bias=False)
        crit = rp.CenterLoss(4, 2, lam=lam, alpha=0.5)
        opt = torch.optim.SGD([*body.parameters(), *head.parameters()], lr=0.05, momentum=0.9)
        centre_opt = crit.optimizer()
        for _ in range(200):
            opt.zero_grad()
            centre_opt.zero_grad()
            f = body(x)
            (F.cross_entropy(head(f), y) + crit(f, y)).backward()
            opt.step()
            centre_opt.step()
        f = body(x).detach()
        means = torch.stack([f[y == j].mean(0) for j in range(4)])
        within = (f - means[y]).norm(dim=1).mean()
        between = torch.cdist(means, means)[~torch.eye(4, dtype=torch.bool)].min()
        return (within / between).item()

    assert spread(1.0) < 0.5 * spread(0.0)


# ----------------------------------------------------------------------------- heads by name

def test_classifier_builds_each_head_by_name():
    learned = rp.classifier("learned", 4, 3)
    assert isinstance(learned, nn.Linear) and learned.bias is None and learned.weight.shape == (4, 3)
    assert torch.equal(rp.class_directions(learned), learned.weight.detach())
    cube = rp.classifier("cube", 5, 3, margin_fraction=0.5, scale=8.0)
    # phi of the 3-cube: arccos(1 - 2/3); the directions are the 5 target rows of the 8 vertices
    assert cube.margin == pytest.approx(0.5 * math.acos(1 / 3)) and cube.scale == 8.0
    assert torch.equal(rp.class_directions(cube), rp.polytope_vertices("cube", 5)[:5])
    assert rp.classifier("simplex", 4, 3).margin is None
    hadamard = rp.classifier("hadamard", 10, 16)
    assert isinstance(hadamard, rp.HadamardClassifier)
    assert torch.allclose(rp.class_directions(hadamard), rp.polytope_vertices("hadamard", 10))
    with pytest.raises(ValueError, match="unknown head"):
        rp.classifier("dodecahedron", 4, 3)


def test_embedding_loss_is_the_heads_loss_plus_center_loss():
    torch.manual_seed(0)
    f, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 0, 1])
    learned = nn.Linear(3, 4, bias=False)
    assert torch.allclose(rp.embedding_loss(learned, f, y), F.cross_entropy(learned(f), y))
    margin = rp.FixedClassifier("simplex", 4, margin=0.3, scale=16.0)
    assert torch.allclose(rp.embedding_loss(margin, f, y),
                          rp.margin_cross_entropy(f, margin.weight, y, 0.3, 16.0))
    center = rp.CenterLoss(4, 3, lam=0.5)
    assert torch.allclose(rp.embedding_loss(learned, f, y, center),
                          F.cross_entropy(learned(f), y) + center(f, y))


def test_center_fit_hand_example():
    features = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1])
    centers = torch.tensor([[2.0, 2.0], [0.0, 5.0]])  # mean 0 = (2, 0): 45 deg, 2 away; mean 1 on c_1
    fit = rp.center_fit(features, labels, centers)
    assert fit.max_angle_deg == pytest.approx(45.0, abs=1e-4)
    assert fit.mean_angle_deg == pytest.approx(22.5, abs=1e-4)
    assert fit.max_distance == pytest.approx(3.0) and fit.mean_distance == pytest.approx(2.5)
