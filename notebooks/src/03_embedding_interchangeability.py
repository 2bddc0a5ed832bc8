# %% [markdown]
# # 03 · Interchangeable embedding spaces: one network's features are a linear map of another's
#
# **What you will see:** a linear map, fitted on a few thousand digits, carries one network's
# embedding into another network's space well enough that the second network's own classifier
# still reads it, while two training runs of one architecture share no coordinates at all. Along
# the way you will see a map written down from the logit layers alone, how few pairs and how few
# dimensions the map needs, why similarity indices such as CKA and CCA answer a different
# question, and where the equivalence weakens: on digits that no network was trained on.
#
# **Paper.** McNeely-White, Sattelberg, Blanchard & Beveridge, *Exploring the Interchangeability
# of CNN Embedding Spaces* (arXiv 2010.02323; v2 was titled *Common CNN-based Face Embedding
# Spaces are (Almost) Equivalent*).
#
# **Claim.** Train two different CNNs on the same task. The penultimate embedding of one is, to a
# good approximation, an affine map of the other's. Map network A's embedding into B's space and
# B's own classifier still works: the abstract reports a *median drop of 1.9 %* in accuracy over
# 90 ImageNet model pairs. In the open set (face verification on people never seen in training),
# mapped embeddings verify almost as well as native ones. When the two networks share the
# classes, a map can even be written down from the logit layers alone.
#
# **Honesty note.** We could not read the paper's full text. The lab follows a reconstruction
# from the abstracts and a third-party review. The maths, the defaults, the details we had to
# choose (fitting set, ridge λ = 1, the pair protocol) and every deviation are on the method page
# `docs/methods/interchange.md`. Everything runs on the embedded `mnist5k` digits, far from
# ImageNet.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

from labkit.core import config
from labkit.methods import interchange as ic
from labkit.methods import interchange_analysis as ia
from labkit.methods import interchange_experiments as ex
from labkit.viz import interchange as viz
from labkit.viz.playable import show
from labkit.widgets import interchange as wid

plt.rcParams["figure.dpi"] = 72  # keeps the stored PNGs small
print(config.describe())
settings, grid = ex.Settings.for_profile(), ex.EXPERIMENT.grid()
threads = config.small_cpu_thread_cap(config.get_device())
if threads:
    torch.set_num_threads(threads)  # the map fits are many small SVDs
print("torch threads:", torch.get_num_threads())
print(f"zoo: {grid['arch']} x seeds {grid['seed']}; control members: {ex.control_arch()}; "
      f"open-set epochs: {ex.open_epochs()}")
for key, value in settings.as_dict().items():
    print(f"{key:>22}: {value}")

# %% [markdown]
# ## The mechanism: an affine map, and a closed form from the logit layers
#
# Network A gives an embedding f_A ∈ R^{d_A} and logits z_A = W_A f_A + b_A (W_A is C × d_A);
# network B likewise. We look for f̂_B = M f_A + t such that B's head on f̂_B gives A's logits:
# W_B (M f_A + t) + b_B = z_A. The pseudo-inverse solves it:
#
# M = W_B⁺ W_A,  t = W_B⁺ (b_A − b_B).
#
# Then W_B f̂_B + b_B = W_B W_B⁺ (z_A − b_B) + b_B, which is exactly z_A when W_B W_B⁺ = I_C,
# i.e. rank(W_B) = C (so d_B ≥ C). Otherwise it is only the least-squares fit of A's logits.
# This proves a map *exists* but says nothing about B's real features, so the paper then fits
# maps from data: least squares between embeddings of the same images (`fit_map`: affine OLS,
# ridge, orthogonal Procrustes, reduced-rank). Two checks on random heads (float64):

# %%
# NBVAL_CHECK_OUTPUT
gen = torch.Generator().manual_seed(0)
C = 10
f_a = torch.randn(500, 64, generator=gen, dtype=torch.float64)
w_a, b_a = torch.randn(C, 64, generator=gen, dtype=torch.float64), torch.randn(C, generator=gen, dtype=torch.float64)
for d_b in (128, 4):
    w_b, b_b = torch.randn(C, d_b, generator=gen, dtype=torch.float64), torch.randn(C, generator=gen, dtype=torch.float64)
    m = ic.map_from_heads(w_a, b_a, w_b, b_b)
    same_logits = torch.allclose(ic.head_logits((w_b, b_b), m(f_a)), ic.head_logits((w_a, b_a), f_a), atol=1e-9)
    print(f"d_B = {d_b:>3} vs C = {C}: rank(W_B) = C: {m.info['exact']}, B's head reproduces A's logits: {same_logits}")

# %% [markdown]
# ## The zoo
#
# Several small architectures × 2 seeds, all ending in embedding (d = 32) → Linear(32, 10) with a
# bias, trained with cross-entropy on the same 4,000 training digits (Adam, cosine schedule; the
# profile's settings are printed above). Four architectures in `lab`: an MLP, LeNet-5, a
# depthwise-separable "MobileNet-lite" and a small VGG (ResNet-20 joins in `full`, on CIFAR-10).
# Two extra networks: a LeNet-5 with a **4-d** embedding (d < C) and an **untrained** LeNet-5
# (a control). Each member's embeddings of the train and test digits are cached, so re-running
# this notebook re-draws without retraining.

# %%
zoo = ex.build_zoo(settings)
for m in zoo.members + list(zoo.extras.values()):
    print(f"{m.name:>18}  d = {m.dim:>2}  test accuracy = {m.test_acc:.3f}")
print()
print(ex.table(ex.summary(zoo.members)))  # test accuracy (%) per architecture over the seeds

# %% [markdown]
# ## E1 · The closed-form map is exact when d_B ≥ C, and fails when d_B < C
#
# For every ordered pair we build M = W_B⁺ W_A from the two trained heads alone (no data) and
# count the test digits on which B's head, applied to the mapped embedding, predicts exactly what
# A predicts.

# %%
# NBVAL_CHECK_OUTPUT
closed = ia.closed_form_matrix(zoo)
for claim, holds in ia.closed_form_checks(closed).items():
    print(f"{claim}: {holds}")

# %% [markdown]
# ## E2 · Fitted maps: how much of B's accuracy do A's mapped embeddings keep?
#
# We fit an affine least-squares map on the 4,000 *training* images (embeddings of the same image
# by A and by B), then send A's *test* embeddings through it and through B's unchanged head.
# **Retention** = acc(A → B) / acc(B); it can exceed 1 when A is the better network.
# Left: the closed-form map (share of A's predictions reproduced); right: the fitted map's
# retention.

# %%
# headline figure
fitted = ia.retention_matrix(zoo, "affine")
fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
viz.plot_matrix(closed.agreement, closed.names, ax=axes[0],
                title="closed-form map: share of A's predictions kept")
viz.plot_matrix(fitted.retention, fitted.names, ax=axes[1], vmin=0.6, vmax=1.2,
                title="fitted affine map: retention acc(A→B)/acc(B)")
fig.tight_layout()

# %% [markdown]
# The paper's headline number is a median over ordered pairs. Here it is, with the controls
# printed beside it: the identity map between two seeds of one architecture (do two runs land in
# the *same* space? no), a map fitted on shuffled correspondences (chance), a map from an
# *untrained* network, and a map fitted on the test images themselves (in-sample).

# %%
ctrl = ia.controls(zoo)
print(f"median retention over {ctrl.n_pairs} ordered pairs, seeds {grid['seed']}:")
print(f"  fitted affine map (train images)   {ctrl.fitted:.3f}")
print(f"  same, fitted on the test images    {ctrl.fit_on_test:.3f}")
print(f"  identity map, same arch other seed {ctrl.identity:.3f}  ({ctrl.n_identity_pairs} pairs)")
print(f"  shuffled correspondences           {ctrl.shuffled:.3f}")
print(f"  untrained network as source        {ctrl.random_init:.3f}")
print(f"  chance (0.1 / median own accuracy) {ctrl.chance:.3f}")

# %%
# NBVAL_CHECK_OUTPUT
print("fitted map beats the identity and shuffled controls:", ctrl.fitted_beats_controls)

# %% [markdown]
# ## How many pairs, and how many dimensions, does the map need?
#
# The v2 abstract says fewer than 500 pairs suffice for a 512 → 512 map, and reducing the map to
# 64 dimensions costs almost nothing. Our analogues, over the 12 ordered pairs of different
# architectures (seed 0): retention vs the number N of fitting images (OLS is under-determined
# below N = 33 and returns the minimum-norm map; ridge with λ = 1 regularises; Procrustes allows
# only a rotation), and retention vs the rank k of a reduced-rank regression map.

# %%
sweep_names = [n for n in zoo.names if n.endswith("-s0")]
ns = [n for n in (20, 50, 100, 300, 1000, len(zoo.train_labels)) if n <= len(zoo.train_labels)]
curves = ia.retention_vs_pairs(zoo, ns, names=sweep_names)
ranks = [k for k in (1, 2, 4, 8, 16, 32) if k <= settings.dim]
by_rank = ia.retention_vs_rank(zoo, ranks, names=sweep_names)
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
viz.plot_curves(ns, curves, ax=axes[0], logx=True, xlabel="fitting pairs N", hline=1.0,
                title="retention vs number of fitting images")
viz.plot_curves(ranks, {"reduced-rank map": by_rank}, ax=axes[1], logx=True, xlabel="map rank k",
                hline=1.0, title="retention vs rank of the map")
fig.tight_layout()
for label, values in curves.items():
    print(f"{label:>16}: " + "  ".join(f"N={n}: {v:.3f}" for n, v in zip(ns, values, strict=True)))
print(f"{'reduced rank':>16}: " + "  ".join(f"k={k}: {v:.3f}" for k, v in zip(ranks, by_rank, strict=True)))

# %% [markdown]
# ## E3 · Do similarity indices predict interchangeability?
#
# Linear CKA, mean CCA, SVCCA and the Procrustes distance compare the two spaces directly (test
# embeddings). CCA is invariant to any invertible linear map, CKA only to rotations and scaling,
# Procrustes only to rotations. Each dot is one model pair; y is the mean retention of its two
# fitted maps.
#
# **Two estimators of CKA.** CKA = HSIC(K, L) / √(HSIC(K, K) HSIC(L, L)) for the Gram matrices
# K = XXᵀ and L = YYᵀ of the two spaces (n test digits each). The usual, *biased* estimator of
# HSIC is inflated unless n is much larger than d: on two independent Gaussian matrices with
# n = 32 rows and d = 64 columns it averages 0.67 instead of 0. The *debiased* estimator
# (`ic.linear_cka(X, Y, debiased=True)`, Song et al.'s unbiased HSIC, as Nguyen, Raghu &
# Kornblith use it for CKA) averages −0.01 there, can dip below 0 on unrelated spaces, and meets
# the biased one as n grows. Both are shown. CCA has the same problem, worse:
# `ic.cca_correlations` warns when n is below 10 times the two spaces' dims together.
#
# **A shuffled-pairs baseline.** Each index is computed a second time with B's rows permuted
# (seeded), so that row i of A no longer embeds the same digit as row i of B. That is what the
# index gives when the correspondence is broken: the grey band and dashed line in the scatter,
# the bottom row of the heatmap. An index says something about a pair only as far as it sits
# beyond that baseline.

# %%
similarity = ia.similarity_rows(zoo)
rows, rhos = similarity.rows, similarity.spearman
fig = viz.plot_similarity_vs_retention(similarity)
print("Spearman rho with retention: " + ", ".join(f"{k} {v:+.2f}" for k, v in rhos.items()))
ranges = {key: [r.index[key] for r in rows] for key in ("cka", "cka_debiased", "mean_cca")}
ranges["retention"] = [r.retention for r in rows]
for key, values in ranges.items():
    print(f"{key:>13} ranges {min(values):.2f}-{max(values):.2f}")
print(f"largest gap between the two CKA estimators: "
      f"{max(abs(r.index['cka'] - r.index['cka_debiased']) for r in rows):.3f}")

# %%
ax = viz.plot_similarity_heatmap(similarity, title="each pair's indices on the test digits, "
                                                   "and with B's rows shuffled")
ax.figure.tight_layout()
baseline = similarity.baseline()
print("shuffled-pairs baseline, median over pairs: "
      + ", ".join(f"{key} {value:.3f}" for key, value in baseline.items()))

# %%
# NBVAL_CHECK_OUTPUT
print("every index sits beyond its shuffled-pairs baseline on every pair:",
      similarity.beyond_baseline())

# %% [markdown]
# ## E4 · Open set: verification on digits no network has seen
#
# Like face recognition on new people: each architecture (seed 0) is trained with a CosFace head
# (pytorch-metric-learning, margin 0.2, scale 16) on digits 0–6 only. The map A → B is fitted
# (affine, on L2-normalised embeddings) on digits 0–6 only. On the unseen digits 7–9 every pair of
# distinct images is a trial: genuine if both show the same digit. *Native* scores compare B's
# embeddings with B's; *mapped* scores compare M f_A(x) with f_B(y), A's probes against B's
# gallery. Cosine scores are our assumption (UNVERIFIED in the paper).

# %%
open_zoo = ex.build_open_set_zoo(settings)
open_res = ia.open_set_results(open_zoo)
fig, ax = plt.subplots(figsize=(6, 4.2))
viz.plot_open_set_roc(open_res, ax=ax, title=f"unseen digits, {open_res.n_unseen} images")
print(f"{'':>28} {'EER':>6} {'TAR@1e-2':>9} {'TAR@1e-3':>9} {'R@1':>6}")
rows_to_print = [(f"{name} native", r) for name, r in open_res.native.items()]
rows_to_print += [(f"{p.source} -> {p.target}", p.metrics) for p in open_res.pairs]
for label, r in rows_to_print:
    print(f"{label:>28} {r['eer']:6.3f} {r['tar@far=0.01']:9.3f} {r['tar@far=0.001']:9.3f} "
          f"{r['recall@1']:6.3f}")
c = open_res.shuffled_control.metrics
print(f"{'shuffled control':>28} {c['eer']:6.3f} {c['tar@far=0.01']:9.3f} {c['tar@far=0.001']:9.3f}")

# %%
# NBVAL_CHECK_OUTPUT
print("median mapped EER below the shuffled control's:", open_res.mapped_beats_control)

# %% [markdown]
# ## Explore a pair
#
# Pick a source, a target and a map: affine, ridge with λ, Procrustes, reduced rank with k, the
# closed form from the heads, or the identity. Left: B's test embeddings (dots) and A's mapped
# ones (crosses) in B's top-2 PCA plane. Right: the three accuracies. Without a kernel, the
# widget shows a picture of its first state.

# %%
wid.map_explorer(zoo, zoo.names[0], zoo.names[-1])

# %% [markdown]
# The same view for this pair over a fixed grid of maps. It plays without a kernel: move the
# slider from the full affine map to few fitting pairs, strong ridge, low rank, the closed form
# and the identity, and watch the crosses leave B's cloud as retention falls.

# %%
show(viz.map_slider(zoo, zoo.names[0], zoo.names[-1]))

# %% [markdown]
# ## Results
#
# The stored run in one table (seeds and counts in the last column). The findings page
# `docs/findings/03_embedding_interchangeability.md` has the numbers of every experiment above
# and what we make of them.

# %%
def spread(values) -> str:
    values = np.asarray(values, dtype=float)
    return f"median {np.median(values):.3f}  [{values.min():.3f}-{values.max():.3f}]"


own = np.array([m.test_acc for m in zoo.members])
pairs_off = ~np.eye(len(fitted.names), dtype=bool)
narrow = closed.names.index(zoo.extras["low_dim"].name)
into_narrow = np.delete(closed.agreement[:, narrow], narrow)
ols_by_n = dict(zip(ns, curves["affine (OLS)"], strict=True))
rank_by_k = dict(zip(ranks, by_rank, strict=True))
n_small = min(ols_by_n, key=lambda n: abs(n - 100))
k_small = min(rank_by_k, key=lambda k: abs(k - 8))
table = [
    ("own test accuracy", f"mean {own.mean():.3f} ± {own.std(ddof=1):.3f} (sd)",
     f"{len(own)} members, seeds {grid['seed']}"),
    ("E1 closed form into d < C: A's predictions kept", spread(into_narrow),
     f"{len(into_narrow)} sources"),
    ("E2 fitted affine map: retention", spread(fitted.retention[pairs_off]),
     f"{ctrl.n_pairs} ordered pairs"),
    ("   identity between seeds: retention", f"median {ctrl.identity:.3f}",
     f"{ctrl.n_identity_pairs} pairs"),
    ("   shuffled pairs / untrained source", f"median {ctrl.shuffled:.3f} / {ctrl.random_init:.3f}",
     f"chance {ctrl.chance:.3f}"),
    (f"   OLS with N = {n_small} pairs / rank-{k_small} map",
     f"median {ols_by_n[n_small]:.3f} / {rank_by_k[k_small]:.3f}", f"{len(sweep_names)} archs, seed 0"),
    ("E3 Spearman rho with retention: CKA / debiased / mean CCA",
     f"{rhos['cka']:+.2f} / {rhos['cka_debiased']:+.2f} / {rhos['mean_cca']:+.2f}", f"{len(rows)} pairs"),
    ("   shuffled pairs: CKA / debiased / mean CCA",
     f"{baseline['cka']:.3f} / {baseline['cka_debiased']:.3f} / {baseline['mean_cca']:.3f}",
     "median over pairs"),
    ("E4 open set EER: native", spread([r["eer"] for r in open_res.native.values()]),
     f"{len(open_res.native)} networks, seed 0"),
    ("   mapped", spread([p.metrics["eer"] for p in open_res.pairs]),
     f"{len(open_res.pairs)} ordered pairs"),
    ("E4 rank-1 retrieval: native", spread([r["recall@1"] for r in open_res.native.values()]),
     f"{open_res.n_unseen} unseen digits"),
    ("   mapped", spread([p.metrics["recall@1"] for p in open_res.pairs]), ""),
]
print(f"profile {config.profile()}")
for measure, value, over in table:
    print(f"{measure:<50} {value:<34} {over}")

# %% [markdown]
# **Reading.** In the closed set, the paper's claim holds at this small scale. A fitted affine map
# kept a median 0.984 of the target's accuracy (a 1.6 % drop against the paper's 1.9 %), and
# the identity between seeds kept 0.003, so the equivalence is real but holds only *up to a
# map*. Two caveats:
# - an untrained network's features, mapped, still kept 0.779, so on MNIST retention shows what
#   A's features can carry, not that A and B learned the same thing;
# - the indices rank the pairs roughly as retention does (Spearman ρ +0.70 for CKA,
#   +0.70 for the debiased one, which differs from the biased one by at most 0.002 at
#   n = 1,000), and every pair sits far beyond the shuffled-pairs baseline (medians 0.004,
#   0.000 and 0.151 for CKA, debiased CKA and mean CCA), but they call spaces only moderately
#   similar that a map makes almost fully interchangeable.
#
# The open set is where this lab departs from the paper. Mapped EERs were 0.33–0.43 against
# native 0.29–0.39 (shuffled control 0.51). That is far above chance, but it is not the paper's
# "at most 1 %".

# %% [markdown]
# ## Exercises
#
# 1. **How low can the rank go?** In the explorer, choose `reduced_rank` and lower k from 32 to
#    1. Look for the rank at which retention starts to fall, and at what the crosses do in the
#    PCA plane. *Hint:* B's head reads an embedding only through C − 1 = 9 logit differences;
#    compare your answer with the rank curve above.
# 2. **Few pairs: OLS against ridge.** Set `fit pairs` to 20 and compare `affine` with `ridge`
#    at λ = 0.01, 1 and 1000. When does the penalty help, and when does it hurt? *Hint:* with
#    N < d + 1 = 33 pairs, OLS is under-determined and returns the minimum-norm map. Ridge
#    shrinks that map toward the mean of B's cloud.
# 3. **Why is the identity below chance?** Map `mlp-s0` into `mlp-s1` with the identity, and
#    count which digit B's head predicts. *Hint:* `ic.head_logits(zoo.member("mlp-s1").head,
#    zoo.member("mlp-s0").test_emb).argmax(1).bincount(minlength=10)`. A constant prediction
#    scores 0.1; a systematically wrong one can score less.
# 4. **CKA on a small probe set.** Recompute `ic.linear_cka` for one pair on 32 random test
#    digits instead of all of them, and repeat with two independent Gaussian matrices of the same
#    shape. Then do both again with `debiased=True`. *Hint:* the default is the biased
#    estimator, which at small n is far from 0 even for unrelated inputs; the debiased one
#    scatters around 0 for them (below 0 too). Which of the two still tells the real pair from
#    the Gaussian one, and how much does each move from one draw of 32 digits to the next?
# 5. **More training for the open set.** Re-run `ex.build_open_set_zoo(settings, epochs=10)`
#    and `ia.open_set_results(...)`. Does the mapped EER close in on the native one? *Hint:* the cache is keyed by the settings, so this trains four new
#    networks (a few minutes on a CPU in `lab`). `LABKIT_PROFILE=full` runs the whole lab on
#    CIFAR-10.
