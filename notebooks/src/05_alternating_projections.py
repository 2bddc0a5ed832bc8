# %% [markdown]
# # 05 · Deep metric learning with alternating projections onto feasible sets (APFS)
#
# **What you will see:** a 2-D embedding pulled, round after round, towards feasible sets built
# from one representative per class (stars with their α and β balls), and how much that helps
# contrastive, triplet and multi-similarity losses on digits the network never saw.
#
# **Paper.** O. Can, Y. Z. Gürbüz, A. A. Alatan, *Deep Metric Learning with Alternating
# Projections onto Feasible Sets*, ICIP 2021, arXiv 1907.07585.
#
# **Claim.** Metric learning is a *feasibility* problem: find weights θ whose embedding puts
# every same-class pair within a margin α and every different-class pair beyond β. Choosing one
# *representative* sample per class relaxes this to a set Θ_k that only constrains
# (sample, representative) pairs. Keeping the same representatives in every batch for T
# iterations, with a proximal term (λ/2)‖θ − θ_k‖² towards the weights at the start of the
# round, is an alternating projection onto these relaxed sets. The abstract says this improves
# standard losses at no extra cost, and that the representatives make hard class mining cheap.
#
# **How much of this is verified.** Only the abstract of the paper was available. The mechanics
# (representatives first in the batch and kept for a "lifetime", losses on the
# sample × representative matrix, a parameter-space proximal term whose λ pulls the gradient by
# λ(θ − θ_k), every pair kept by the losses with no miner) follow the authors' later code
# (ccp-dml). The representative queue, the class-mining rule and all hyper-parameters
# (T, λ, P, M, margins) are **our reconstruction**. We test the *mechanism* exactly and report
# the *claim* as measured here. The maths, the defaults, the comparison with the authors' code
# and every known deviation are in `docs/methods/apfs.md`.

# %%
import numpy as np
import torch
from IPython.display import display

from labkit.core import config
from labkit.core.report import text_table
from labkit.methods import apfs
from labkit.methods import apfs_experiments as ax
from labkit.viz import apfs as vapfs
from labkit.viz import report
from labkit.viz.playable import show
from labkit.widgets import apfs as wapfs

# small CPU models: one intra-op thread avoids oversubscribing a shared CPU (no effect on GPUs)
torch.set_num_threads(1)

print(config.describe())
settings, grid = ax.Settings.for_profile(), ax.EXPERIMENT.grid()
for key, value in {**settings.as_dict(), **grid}.items():
    print(f"{key:>18}: {value}")

# %% [markdown]
# ## The mechanism
#
# **Batches.** `RepresentativeBatchSampler` starts a round by drawing one representative r_c per
# class from a per-class shuffled queue (every sample serves once before any repeats). For the
# next T batches, each batch holds P classes: their P representatives first, then M − 1 fresh
# samples of each class. A toy label vector shows it (classes 0–3, P = 2, M = 3, T = 2):

# %%
toy_labels = np.repeat(np.arange(4), 4)  # 4 classes x 4 samples, indices 0..15
toy = apfs.RepresentativeBatchSampler(toy_labels, classes_per_batch=2, samples_per_class=3,
                                      lifetime=2, seed=0, batches_per_pass=6)
for i, batch in enumerate(toy):
    print(f"round {i // 2} batch {i % 2}: representatives {batch[:2]}  samples {batch[2:]}")

# %% [markdown]
# **The loss.** Anchors are the batch's samples; positives and negatives come only from the
# representatives (pytorch-metric-learning's `ref_emb`/`ref_labels`). For contrastive loss this is
# [d(x_i, r_{y_i}) − m_p]_+ + Σ_{c≠y_i} [m_n − d(x_i, r_c)]_+. Triplet and multi-similarity
# work the same way on the (B − P) × P matrix, with every pair counted (no miner, as in the
# authors' framework). **The proximal term** (λ/2)‖θ − θ_anchor‖², whose gradient λ(θ − θ_anchor)
# is the authors' pull, moves its anchor at every round boundary (a `fit` callback). The checks
# below are exact identities:

# %%
# NBVAL_CHECK_OUTPUT
rounds = [list(toy)[i:i + 2] for i in range(0, 6, 2)]
print("within a round, every batch has the same representative per class:",
      all(len({(int(toy_labels[i]), i) for b in r for i in b[:2]}) ==
          len({int(toy_labels[i]) for b in r for i in b[:2]}) for r in rounds))
log = np.stack(toy.representative_log)  # (rounds so far, classes)
print("each sample serves as representative once before any repeats:",
      all(sorted(log[:4, c]) == list(np.flatnonzero(toy_labels == c)) for c in range(4)))

net = torch.nn.Linear(3, 2).double()
prox = apfs.ProximalRegularizer(net, strength=0.6, lifetime=2)
print("penalty at the anchor is 0:", prox.penalty().item() == 0.0)
with torch.no_grad():
    net.weight += 0.1
grad = torch.autograd.grad(prox.penalty(), net.weight)[0]
print("gradient is lambda*(theta - anchor):",
      torch.allclose(grad, 0.6 * (net.weight - prox.anchors[0])))
prox.on_step_end(), prox.on_step_end()  # a round of T = 2 steps ends: the anchor moves
print("after T steps the anchor is reset:", prox.penalty().item() == 0.0)

# %% [markdown]
# **Hard class mining.** Because representatives are fixed for a round, embedding them once
# (C forward passes per round) gives a class-to-class distance matrix D_rep. Each batch then
# takes a seed class from a cycling queue of classes plus its P − 1 nearest classes, and the
# mined classes leave the queue too (they have had their turn). On planted embeddings where
# classes {0, 1, 2} and {3, 4, 5} form two tight groups, a mined batch of three classes is
# always one group, and the next batch is the other group:

# %%
# NBVAL_CHECK_OUTPUT
planted = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.98, -0.2], [0.0, 1.0], [0.1, 0.99], [-0.2, 0.98]])
labels6 = np.repeat(np.arange(6), 3)
mined = apfs.RepresentativeBatchSampler(
    labels6, 3, 2, lifetime=3, hard_class_mining=True, batches_per_pass=6,
    embed_fn=lambda idx: planted[torch.as_tensor(labels6)[idx]])
groups = [frozenset(labels6[b[:3]].tolist()) for b in mined]
print("every mined batch is one planted group:",
      set(groups) <= {frozenset({0, 1, 2}), frozenset({3, 4, 5})})
print("each pair of batches covers both groups:",
      all(groups[i] != groups[i + 1] for i in range(0, len(groups), 2)))

# %% [markdown]
# ## Feasible sets in the plane
#
# To *see* Θ_k we train a network with a **2-D, unnormalised** embedding on the training digits
# 0–4 with contrastive APFS (all 5 classes in every batch, margins α = 0.5 and β = 2). Each star
# is a representative r_c; the solid circle (radius α) is where its class should be, the dashed
# circle (radius β) is where the other classes should not be. Each round is T optimiser steps
# towards Θ_k; then new representatives define the next set.

# %%
# headline figure
geometry = apfs.geometry_run()
fig = vapfs.plot_rounds(geometry, rounds=(0, len(geometry.representatives) - 1))

# %% [markdown]
# How much of Θ_k holds before and after each round: the fraction of (sample, own representative)
# pairs within α and of (sample, other representative) pairs beyond β. In the stored run the
# inter-class fraction climbs towards 1 over the rounds (0% at the start of round 0, 99.6% at
# the end of round 11), while the intra-class fraction falls from 1 in the first round to a
# small share and stays low (under a quarter from round 3 on, 21% at the end): the separating
# constraints are met, the compacting ones are not, so the iterates do *not* reach the
# intersection of the sets here (the Results section prints the first and last values of your
# run).

# %%
ax_sat = vapfs.plot_satisfaction(geometry)

# %% [markdown]
# Slide over the rounds (a live widget: run the notebook to move it; stored, it shows round 0):

# %%
display(wapfs.RoundExplorer(geometry).widget)

# %% [markdown]
# The same rounds play without a kernel: move the slider from round 0 to the last round and
# watch the stars, their balls and the points they constrain.

# %%
show(vapfs.round_slider(geometry))

# %% [markdown]
# ## The ablation: does APFS improve standard losses?
#
# Setup (lab profile): train on `mnist5k` digits 0–4 (2,500 images), evaluate retrieval on the
# *unseen* digits 5–9 (2,500 images) with `labkit.core.evaluate.retrieval_metrics` (cosine
# similarity; recall@K, NMI with k-means, MAP@R). A small 3-block CNN with a 64-d embedding,
# Adam (lr 1e-3), 5 passes × 60 steps, batches of P = 3 classes × M = 10 images, for each loss:
#
# * **baseline**: pytorch-metric-learning's m-per-class batches, the loss on all pairs/triplets;
# * **apfs**: representative batches with T = 10, loss on sample-to-representative pairs,
#   λ = 0.2;
# * **apfs+mining**: the same with hard class mining (seed class + 2 nearest of 5).
#
# Same steps, same batch size, three seeds each. The losses keep every pair (no miner, as in the
# authors' framework). λ = 0.2 was fixed after a one-seed pilot on contrastive loss; T, P, M and
# the margins were not tuned. The test classes are all we have for evaluation here, so that
# pilot is a (small) look at the test set (`docs/findings/05_alternating_projections.md`).

# %%
results = ax.sweep(progress=False)  # the profile's grid: losses x variants x seeds
summary = ax.summary(results)
print(ax.table(summary))

# %%
fig = report.plot_grouped_bars(summary, ("recall@1", "nmi", "map@r"), colors=vapfs.VARIANT_COLORS)

# %%
fig = report.plot_recall_curves(summary, colors=vapfs.VARIANT_COLORS)

# %% [markdown]
# The abstract's two claims per loss, as gains paired by seed (the variant minus its reference on
# the same seed; mean ± std over the seeds, and on how many seeds the variant scored higher):

# %%
for claim, per_loss in ax.claims(summary).items():
    for loss, gain in per_loss.items():
        print(f"{claim:15s} {loss:17s} {gain.format(100)} points")

# %% [markdown]
# ## Cost per step
#
# The abstract claims no extra cost. A step of APFS embeds the same P·M images as the baseline
# (the representatives take P of the slots), computes a smaller (B − P) × P loss matrix and adds
# the proximal term; mining adds one forward pass over the C representatives per round. Blocks of
# one sampler pass (whole rounds) of the three variants are timed side by side, alternating, so
# machine noise hits all alike; the ratio is total time over total time, with the median of the
# per-block ratios beside it (when the two fall on opposite sides of 1.10, this machine was too
# noisy to decide). The ratio moves from process to process on a shared CPU; the findings page
# lists the spread measured:

# %%
# timing cell
cost = ax.step_cost(repeats=config.pick(quick=2, lab=7))
for key, value in cost.as_dict().items():
    print(f"{key:>34}: {value:.3f}" + (" ms" if key.endswith("_ms") else "x"))
print("APFS within 10% of the baseline per step (total time):", cost.ratio("apfs") <= 1.10)

# %% [markdown]
# ## What λ and T do
#
# Cached APFS runs (contrastive, seed 0) over the proximal strength λ and the lifetime T.
# Left: recall@1 on the unseen classes; right: how far the weights moved in each round,
# ‖θ − θ_anchor‖ at the round's end. A larger λ keeps each round closer to its anchor (a shorter
# projection step); a longer T lets each relaxed problem be solved further before the
# representatives change. T = 1 with λ = 0 is plain training on representative pairs.

# %%
base = ax.Settings.for_profile(loss="contrastive", variant="apfs", seed=0)
sweeps = {p: ax.sweep(base, progress=False, **{p: values})
          for p, values in ax.sweep_values().items()}
for parameter, runs in sweeps.items():
    fig = vapfs.plot_sweep(runs, parameter)

# %% [markdown]
# Pick λ or T and slide over its cached runs (a live widget: run the notebook to move it):

# %%
display(wapfs.SweepExplorer(sweeps).widget)

# %% [markdown]
# The same runs play without a kernel: move the slider across the λ values and then the T values.

# %%
show(vapfs.sweep_slider(sweeps))

# %% [markdown]
# ## Results
#
# The stored `lab` run in one table: recall@1 and NMI on the unseen digits 5–9, in %, mean ± std
# over the seeds, then the sweeps (contrastive APFS, seed 0) and the 2-D run's constraint shares.

# %%
losses = dict.fromkeys(loss for loss, _ in summary.stats)
columns = [(metric, variant) for metric in ("recall@1", "nmi") for variant in ax.VARIANTS]
print(text_table(["loss", "seeds", *[f"{m} {v}" for m, v in columns]],
                 [[loss, summary.stats[(loss, "baseline")]["recall@1"].n,
                   *[summary.stats[(loss, v)][m] for m, v in columns]] for loss in losses],
                 scale=100, digits=1))
for parameter, runs in sweeps.items():
    print(f"recall@1 over {parameter:>8}: " + ", ".join(
        f"{getattr(r.settings, parameter):g}: {100 * r.metrics['recall@1']:.1f}" for r in runs))
(intra0, inter0), (intra1, inter1) = (geometry.satisfaction[0]["before"],
                                      geometry.satisfaction[-1]["after"])
print(f"2-D run, share of Theta_k met: round 0 start within alpha {100 * intra0:.0f}%, beyond "
      f"beta {100 * inter0:.0f}%; round {len(geometry.satisfaction) - 1} end within alpha "
      f"{100 * intra1:.0f}%, beyond beta {100 * inter1:.0f}%")

# %% [markdown]
# **Reading the stored run** (2-core shared CPU, seeds 0–2).
#
# * **APFS against the baseline: a clear gain for multi-similarity only, not the consistent
#   gain the paper claims.** Paired by seed, recall@1 moves by +4.4 ± 1.8 points for
#   multi-similarity (higher on all three seeds, the one change larger than its spread),
#   +0.9 ± 2.2 for triplet (higher on one of the three) and −1.9 ± 3.6 for contrastive (higher
#   on one of the three). Multi-similarity runs without a pair miner, as the authors' framework
#   does; with pytorch-metric-learning's miner (an earlier stored run) its baseline reached
#   90.9 and APFS was level with it (+0.6 ± 2.2).
# * **Hard class mining on top of APFS: no gain beyond the seeds' noise.** Recall@1 moves by
#   +1.1 ± 3.1, +0.7 ± 0.8 and −0.1 ± 0.1 points (contrastive, triplet, multi-similarity),
#   higher on one, two and none of the three seeds. NMI moves by +3.7, +1.1 and −0.2 points
#   (means), against spreads of the mining row's NMI of 3.5, 4.1 and 1.9.
# * **Cost:** 1.04× the baseline per step for APFS (1.03× by the median block) and 1.04× with
#   mining (1.03×) in the stored run, within 10% (it printed True); on this machine the ratio
#   moves by several percent between processes (earlier stored runs measured 1.07×, 1.10× and
#   1.11×).
# * **λ and T** (one seed): read the sweep line above with one seed's noise in mind (λ = 0.2, the
#   value kept for the ablation, is second lowest of the four λ runs there, λ = 2 the highest
#   at 87.4); the round-end distance ‖θ − θ_anchor‖ falls with λ and grows with T, as the
#   proximal view predicts.
#
# With five training classes every batch already holds three of them, and the
# sample-to-representative loss sees 81 pairs per batch where the baseline sees 435: the
# paper's setting (100 or more classes, pretrained backbones, long training) is where a stable
# relaxed set is supposed to pay off. Trials and measurements behind these lines:
# `docs/findings/05_alternating_projections.md`.
#
# ## Exercises
#
# 1. **A stronger or longer projection.** Train `ax.run(base.replace(strength=2.0))` and
#    `ax.run(base.replace(lifetime=30))` and compare their `round_distances` and
#    `metrics["recall@1"]` with the λ = 0.2, T = 10 run, `ax.run(base)`. *Hint:* λ pulls each
#    round back towards its anchor θ_k; T is the number of steps each relaxed problem gets.
# 2. **Can the compacting constraints be met?** Run
#    `apfs.geometry_run(apfs.GeometrySettings.for_profile(alpha=1.0))` (or `lifetime=30`) and
#    draw it with `vapfs.plot_satisfaction`. Does the within-α share stop falling? *Hint:* a
#    larger α is an easier intra-class constraint; the embedding is 2-D and unnormalised, so
#    the balls are drawn to scale.
# 3. **Softer class mining.** Train
#    `ax.run(base.replace(variant="apfs+mining", temperature=0.1))` and compare recall@1 and NMI
#    with nearest-class mining. *Hint:* a temperature samples the hard classes with probability
#    ∝ exp(−D_rep/τ) instead of always taking the nearest.
# 4. **The multi-similarity miner.** Train `ax.run(base.replace(loss="multi_similarity",
#    miner="multi_similarity"))`, which adds pytorch-metric-learning's `MultiSimilarityMiner`
#    (ε = 0.1), and compare it with the ablation's multi-similarity APFS run on seed 0. *Hint:*
#    the miner drops the pairs that are already easy; the authors' framework has no miner here,
#    so the ablation runs without one.
# 5. **Many classes.** `LABKIT_PROFILE=full` points the same runner at CUB-200 (a local folder,
#    see `labkit.core.data`), with 100 training classes. *Hint:* with 5 classes and 3 per batch
#    there is little to mine; with 100 the nearest classes are a real choice.
