# %% [markdown]
# # 06 · One space, five lenses: questions no single paper asks
#
# **What you will see:** the other notebooks' methods turned on each other. Networks trained
# towards a fixed simplex share a space that networks with learned heads do not share. FDL
# ensemble members look at different places, yet each member's embedding is still an affine
# image of another's. GSP pooling and APFS batches do not add up on these digits. And APFS
# batches leave the seen classes measurably less collapsed.
#
# **Where the questions come from.** Each paper makes a claim about one part of a network:
#
# - the classifier (RePoNet, notebook 01);
# - how ensemble members differ (FDL, 02);
# - how two networks' spaces relate (interchangeability, 03);
# - the pooling (GSP, 04);
# - the batches (APFS, 05).
#
# Put side by side, they raise questions that none of the papers asks:
#
# - **(a)** A fixed polytope prescribes where every class goes. Are networks trained towards it
#   more interchangeable than networks whose classifier is learned?
# - **(b)** FDL pushes members to attend to different regions. Do members that look at different
#   places still live in linearly interchangeable spaces?
# - **(c)** Does GSP pooling combine with APFS batches, or do the two gains overlap?
# - **(d)** How collapsed are metric-learning embeddings (NC1, NC2), and do GSP or APFS change
#   that?
#
# **How it is measured.** Every network here is one of the runners' own runs, with their
# `lab` settings; runs that notebooks 01 and 02 trained come from the shared cache. Every number
# carries its seeds and its spread. Nothing here is a claim of a paper, so there is nothing to
# confirm: the readings say what the runs show and how sure they are. The measures live in
# `labkit.methods.cross_method`.

# %%
import matplotlib.pyplot as plt
import torch

from labkit.core import config
from labkit.core.report import paired_gain, text_table
from labkit.methods import cross_method as cm
from labkit.viz import cross_method as vcm
from labkit.viz import report

plt.rcParams["figure.dpi"] = 72  # keeps the stored PNGs small
# small CPU models: one intra-op thread avoids oversubscribing a shared CPU (no effect on GPUs)
torch.set_num_threads(1)
print(config.describe())
print("seeds of (a) and (b):", cm.seeds(), "| seeds of (c) and (d):", cm.combination_seeds())

# %% [markdown]
# ## (a) Fixed polytopes against learned heads
#
# The RePoNet runner trains the same LeNet++ twice per seed, on all ten digits:
#
# - towards the fixed **simplex** (d = 9: ten unit vertices, the logits f Wᵀ with W never
#   trained);
# - with a **learned** linear head at the same d = 9.
#
# Each network becomes a member of an interchange zoo (notebook 03). A member is its
# features of all 4,000 training digits and all 1,000 test digits, plus its logit layer. For
# every ordered pair A → B, three retentions and one similarity are measured (retention is
# B's head accuracy on A's embedding, mapped, over B's own accuracy):
#
# - **no map:** B's head reads A's raw features;
# - **affine, 20 pairs:** a map fitted on 20 training digits;
# - **affine, all:** a map fitted on all 4,000;
# - **linear CKA** of the two test embeddings. It does not change under rotations, so it asks
#   whether the two spaces have the same shape, whatever their coordinates.

# %%
polytope = cm.polytope_runs()
print(text_table(["run", "seed", "test accuracy %"],
                 [[r.settings.label, r.settings.seed, 100 * r.metrics["accuracy"]]
                  for r in polytope], digits=1))
zoo = cm.polytope_zoo(polytope)
pairs = cm.pair_scores(zoo)

# %%
# headline figure
fig = vcm.plot_pair_matrices(pairs, zoo.names)

# %% [markdown]
# Per kind of pair: mean ± std over the ordered pairs. With three seeds there are 6 pairs
# within a kind and 9 in each direction across, and the pairs share networks, so read the
# spread as a range, not as independent draws:

# %%
groups = cm.by_kinds(pairs)
print(text_table(["pair", "pairs", *[vcm.TITLES[m] for m in cm.PairScores.MEASURES]],
                 [[kinds, stats["cka"].n, *stats.values()] for kinds, stats in groups.items()],
                 digits=3))

# %% [markdown]
# The paired form of the question. Take the simplex pair (s_i, s_j) and the learned pair
# (l_i, l_j) of the same two seeds. Here is the simplex pair's score minus the learned pair's,
# over the six ordered seed pairs, and on how many the simplex pair scored higher (the count
# reads "seeds"; here it counts seed pairs):

# %%
for measure in ("affine_few", "affine_all", "cka"):
    gain = cm.kind_gain(pairs, measure, "simplex", "learned")
    print(f"simplex - learned, {vcm.TITLES[measure]:>30}: {gain.format(1, 3)}")

# %% [markdown]
# **Reading (a).** *Are fixed-polytope networks more interchangeable?* Yes, in two ways this
# lab can measure. It is no in the way the interchangeability paper measures.
#
# - **No map needed.** The simplex networks share their classifier, so one network's raw
#   features fed to another's head keep all of its accuracy (retention 1.000 ± 0.004). Between
#   learned heads, and across the two kinds, the raw features land near chance (0.08–0.14; with
#   ten classes chance is about 0.1). The fixed head fixes the coordinates, not only the
#   geometry.
# - **Same shape.** Linear CKA is 0.940 ± 0.004 between simplex networks, 0.774 ± 0.047 between
#   learned ones and 0.861 across. The paired gain is +0.167 ± 0.046, higher on all six seed
#   pairs.
# - **Fewer pairs needed.** An affine map fitted on 20 digits retains 0.973 ± 0.033 between
#   simplex networks and 0.831 ± 0.086 between learned ones. The paired gain is +0.141 ± 0.087,
#   higher on all six seed pairs.
# - **Where it is no:** fitted on all 4,000 digits, maps retain 0.995–0.999 on average for
#   every kind of pair (simplex minus learned: +0.005 ± 0.006). With enough pairs, notebook
#   03's equivalence holds for both kinds alike.
#
# All networks reach 98.3–99.0% test accuracy, so none of this is a weak network's noise.

# %% [markdown]
# ## (b) Members that look apart: are their spaces still interchangeable?
#
# The FDL runner trains five-member ensembles on k = 100 digits per class, per seed:
#
# - **classical:** the members' cross-entropies alone;
# - **FDL:** the same members and steps, plus the feature-distance loss that pushes their
#   feature maps apart.
#
# Each member's 128-d dense embedding (the layer before its head) is a zoo member. The affine
# maps are fitted on the embeddings of all 2,500 training digits: fitting needs no labels, even
# though each member was trained on only 1,000 of them. They are scored on the run's 500 test
# digits. Per ensemble, every score is a mean over the 20 ordered member pairs. Beside it stand
# the run's own attention overlaps, from notebook 02:
#
# - IoU of the members' thresholded FDL maps;
# - IoU of their Grad-CAMs;
#
# lower is more diverse.

# %%
ensembles = cm.ensemble_runs()
scores = {method: [cm.ensemble_scores(r) for r in runs] for method, runs in ensembles.items()}
columns = ("member_accuracy", "iou_map", "iou_cam", *cm.PairScores.MEASURES)
print(text_table(["ensemble", "seed", *columns],
                 [[method, r.settings.seed, *[row[c] for c in columns]]
                  for method, runs in ensembles.items()
                  for r, row in zip(runs, scores[method], strict=True)], digits=3))

# %%
fig = vcm.plot_ensemble_scores(scores)

# %% [markdown]
# FDL minus classical on the same seed, with the spread over seeds and on how many seeds FDL
# scored higher:

# %%
for column in columns:
    gain = paired_gain(*({r.settings.seed: row[column]
                          for r, row in zip(ensembles[m], scores[m], strict=True)}
                         for m in ("fdl", "classical")))
    print(f"fdl - classical, {column:>15}: {gain.format(1, 3)}")

# %% [markdown]
# **Reading (b).** *Do members that look apart still share a space?* Yes, up to an affine map.
# Their spaces are shaped less alike, though.
#
# - **FDL does its job.** It cuts the members' map overlap from about 0.72 to about 0.21 and
#   their Grad-CAM overlap from about 0.35 to about 0.19, lower on every seed.
# - **The map still carries.** With all training digits, maps between FDL members retain
#   0.977–0.992, against 0.980–0.989 in the classical ensembles (FDL minus classical:
#   +0.002 ± 0.012): no difference beyond the seeds' spread.
# - **The shape does not.** Linear CKA falls from about 0.81 to about 0.65 (−0.167 ± 0.059,
#   lower on all three seeds). A map fitted on 20 digits retains less too (about 0.69 against
#   0.76). These are 128-d spaces, so 20 pairs under-determine the map, and that reading mixes
#   shape and sample size.
#
# So attending to different regions changes how the members' features are spread, not whether
# one member's features carry another's class information linearly. The members are also
# weaker: 0.70 against 0.76 on average, the accuracy cost notebook 02 measures.

# %% [markdown]
# ## (c) GSP pooling with APFS batches
#
# A 2 × 2 on the APFS runner (its losses, batch sampler, proximal term and step budget),
# with the GSP runner's network:
#
# - the slim VGG whose last map stays at 7 × 7;
# - the GSP layer with K = 16, μ = 0.3 and γ = 5;
# - **gap** is the same layer with μ = 1, which is exactly global average pooling.
#
# The batches are **baseline** (m-per-class, the loss on all pairs) or **apfs**
# (representative batches with T = 10 and λ = 0.2). The loss is multi-similarity, the one
# where APFS helped in notebook 05. Training uses digits 0–4; retrieval is scored on the
# unseen digits 5–9, over five seeds.

# %%
combination = cm.combination_grid()
rows = cm.combination_rows(combination)
summary = cm.combination_summary(rows)
print(text_table(["pooling", "batches", "seeds", "recall@1", "map@r", "nmi"],
                 [[*key, stats["recall@1"].n, stats["recall@1"], stats["map@r"], stats["nmi"]]
                  for key, stats in summary.stats.items()], scale=100, digits=1))

# %%
fig = report.plot_grouped_bars(summary, ("recall@1", "map@r"))

# %% [markdown]
# Paired by seed, in points of recall@1. The interaction is GSP's gain with APFS batches minus
# its gain without: 0 means the two effects simply add.

# %%
for name, gain in cm.combination_gains(rows, "recall@1").items():
    print(f"{name:>45}: {gain.format(100)} points")

# %% [markdown]
# **Reading (c).** *Does GSP combine with APFS?* Nothing here to combine.
#
# - **Each alone.** Neither beats plain training with average pooling (88.5 ± 2.6 recall@1).
#   GSP alone moves it by −1.6 ± 2.6 points (higher on 2 of 5 seeds), APFS alone by
#   −1.7 ± 1.8 (1 of 5).
# - **Together** (86.6 ± 2.6): no better than either alone.
# - **The interaction,** +1.4 ± 4.6 points, is well inside its spread.
#
# On 28 × 28 digits there is little background for GSP to drop: notebook 04's multi-similarity
# runs on `mnist5k` found GSP − GAP at −1.0 ± 0.9 points too. This network is not notebook 05's: there APFS helped multi-similarity by +4.4
# points with the small flatten-neck CNN. With the slim VGG and average pooling, it does not.
# The APFS gain depends on the network, which is worth knowing before reading one ablation as a
# law.

# %% [markdown]
# ## (d) Neural collapse of metric-learning embeddings
#
# Papyan et al.'s measures (`reponet.neural_collapse`, as notebook 01 uses them on classifier
# features) are taken here on the L2-normalised embeddings, the space the losses and retrieval
# read:
#
# - **NC1** = tr(Σ_W Σ_B⁺)/K: the spread within classes over the spread between them (0: every
#   class a point);
# - **NC2:** the distance of the centred class means from a simplex equiangular tight frame
#   (0: a perfect simplex).
#
# Both are measured on the seen classes (the 2,500 training digits 0–4) and on the unseen ones
# (digits 5–9), for the same 2 × 2 runs.

# %%
print(text_table(["pooling", "batches", "NC1 seen", "NC2 seen", "NC1 unseen", "NC2 unseen"],
                 [[*key, stats["nc1_seen"], stats["nc2_seen"], stats["nc1_unseen"],
                   stats["nc2_unseen"]] for key, stats in summary.stats.items()], digits=3))
for metric in ("nc1_seen", "nc2_seen", "nc1_unseen"):
    for name, gain in cm.combination_gains(rows, metric).items():
        if "interaction" not in name:
            print(f"{metric:>10} {name:>45}: {gain.format(1, 3)}")

# %%
fig = report.plot_grouped_bars(summary, ("nc1_seen", "nc2_seen", "nc1_unseen"), scale=1.0,
                               zoom=False)

# %% [markdown]
# **Reading (d).** *Do GSP or APFS change how collapsed the embedding is?* APFS does, GSP does
# not.
#
# - **Seen classes collapse far.** NC1 there is about 0.06 with plain batches: classes are
#   tight against their separation.
# - **APFS batches loosen that.** NC1 is about twice as large (+0.054 ± 0.022 with GAP,
#   +0.048 ± 0.019 with GSP, higher on all five seeds in both). NC2 rises from about 0.46 to
#   0.55 (+0.086 ± 0.059 with GAP on 5/5 seeds, +0.102 ± 0.098 with GSP on 4/5). A loss on sample-to-representative pairs pulls each sample towards one
#   representative, not towards all of its class.
# - **GSP** changes neither beyond its spread.
# - **Unseen classes** are far from collapsed (NC1 about 1.7, NC2 about 0.8) in every cell,
#   with seed spreads too large to separate the cells.
#
# The looser seen-class collapse comes with no retrieval gain on the unseen digits here (c).
# Whether less collapse transfers better, as a common argument for metric learning goes, is
# not shown by these runs.

# %% [markdown]
# ## Results
#
# The stored `lab` run in one place: (a) per kind of pair, (b) per ensemble method, (c) and
# (d) per cell of the 2 × 2.

# %%
for kinds, stats in groups.items():
    print(f"(a) {kinds:>19}: " + ", ".join(f"{vcm.TITLES[m]} {s.format(1, 3)}"
                                          for m, s in stats.items()))
for method, rows_b in scores.items():
    print(f"(b) {method:>10}: " + ", ".join(
        f"{c} {sum(r[c] for r in rows_b) / len(rows_b):.3f}" for c in columns))
for key, stats in summary.stats.items():
    print(f"(c, d) {key[0]}/{key[1]:>8}: recall@1 {stats['recall@1'].format(100, 1)}, "
          f"NC1 seen {stats['nc1_seen'].format(1, 3)}, NC2 seen {stats['nc2_seen'].format(1, 3)}")

# %% [markdown]
# **Reading the stored run** (2-core shared CPU; seeds 0–2 for (a) and (b), 0–4 for (c) and
# (d)).
#
# - **(a)** A fixed simplex makes networks interchangeable without any map, and more alike in
#   shape: CKA +0.17 over learned pairs on all six seed pairs. It also needs fewer pairs for a
#   fitted map. With all pairs, every network maps into every other.
# - **(b)** FDL members attend apart and are shaped less alike (CKA −0.17 on all three seeds). One member's
#   features still carry another's class information through an affine map.
# - **(c)** GSP and APFS neither help alone nor together on these digits; the interaction is
#   noise.
# - **(d)** APFS batches double the seen classes' NC1 on every seed; GSP leaves collapse as it
#   is.
#
# Where these readings stop: ten digit classes and 28 × 28 images, small networks and CPU
# budgets. (c) in particular is the question to re-ask where GSP has background to drop
# (notebook 04's cluttered digits) and APFS has many classes to choose from. The measurements
# behind these lines, the timings and what was left out: `docs/findings/06_one_space_five_lenses.md`.
#
# ## Exercises
#
# 1. **Does the margin variant share a space too?** A margin head's logits are cosines, not
#    f Wᵀ, so it makes no zoo; compare two seeds by CKA alone. With
#    `from labkit.methods import interchange as ic, reponet_experiments as rx`, take
#    `a, b = (rx.run(rx.Settings.for_profile(margin=True, seed=s)) for s in (0, 1))` and
#    `ic.linear_cka(a.test_features, b.test_features)`. *Hint:* the margin pulls features onto
#    the vertex directions, so their shape should agree even more.
# 2. **Fewer pairs.** With `from labkit.methods import interchange_analysis as ia`, compare
#    `ia.retention_vs_pairs(zoo, [5, 10, 20, 50], names=zoo.names[:3])` (the simplex networks)
#    with the same for `names=zoo.names[3:]` (the learned ones). At how many pairs do the
#    learned heads catch up? *Hint:* the affine map has d + 1 = 10 unknowns per output.
# 3. **Cluttered digits for (c).** Re-run the 2 × 2 on the set where GSP has something to drop:
#    `cm.combination_grid(cm.combination_settings(dataset="cluttered_mnist5k"))`. *Hint:*
#    notebook 04 measured GSP's gain there; a 60 × 60 image has 4.6 times the pixels, so
#    expect each run to be slower.
# 4. **Another loss.** `cm.combination_grid(cm.combination_settings(loss="contrastive"))` asks
#    (c) with GSP's default loss. *Hint:* notebook 05 found APFS hurt contrastive loss slightly.
