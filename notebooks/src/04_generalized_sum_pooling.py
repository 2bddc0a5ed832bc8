# %% [markdown]
# # 04 · Generalized Sum Pooling for metric learning
#
# **What you will see:** a pooling layer that keeps only a fraction μ of a conv map's features,
# chosen by optimal transport to learned prototypes, and its weight maps over an unseen digit for
# a grid of μ and γ. Trained briefly on MNIST it pools almost like average pooling; on
# cluttered digits its weight sits on the digit at 1.5 times the chance share (2.5 times at a
# sharper γ). Its retrieval gains over average pooling stay within the seeds' spread.
#
# *Gürbüz, Şener, Alatan (ICCV 2023, arXiv 2308.09228).* Only the paper's abstract was
# available; the maths is reconstructed from the authors' code, so equation forms and the
# paper's numbers are **unverified**. The method page `docs/methods/gsp.md` gives the maths with
# labkit's names, the defaults, the comparison with the authors' code and every deviation.
#
# **Claim.** Global average pooling (GAP) is one special case of an entropy-smoothed *partial*
# optimal-transport problem between a conv map's local features and a few learnable
# prototypes. Solving that problem lets the network keep only a fraction μ of the features,
# weighted by how well they match the prototypes, and this helps deep metric learning. A
# zero-shot prediction loss (ZSR) pushes the prototypes to be semantic.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from labkit.core import config
from labkit.core.report import spread
from labkit.methods import gsp
from labkit.methods import gsp_experiments as gx
from labkit.viz import gsp as vg
from labkit.viz import report
from labkit.viz.playable import show
from labkit.widgets import gsp as wg

print("profile:", config.profile(), "| device:", config.get_device())

# %% [markdown]
# ## 1 · The mechanism
#
# Each of the n = h·w local features f_i carries mass 1/n. It can be sent to K prototypes ω_k
# (plan π_ki, cost c_ki = ‖ω̂_k − f̂_i‖ on the unit ball) or left in a residual bin ρ_i; exactly
# μ of the mass must move. With entropy weight ε = 1/γ the optimum has a closed form up to a
# single scalar β per image:
#
# $$\pi_{ki} = \beta\,e^{-\gamma c_{ki}}\rho_i,\qquad \rho_i = \frac{1/n}{1+\beta s_i},\quad s_i=\sum_k e^{-\gamma c_{ki}},\qquad \beta \text{ s.t. } \textstyle\sum_{ki}\pi_{ki}=\mu .$$
#
# The pooled vector is x = Σ_i (t_i/μ) f_i with t_i = Σ_k π_ki: a weighted average whose
# weights w_i = n t_i / μ lie in [0, 1/μ] and average to 1. At μ = 1 every feature is fully
# transported, so w_i = 1 and **x is exactly GAP**. Below: 12 "object" features near two
# prototypes (★) among 36 background features; as μ shrinks, the background is switched off.

# %%
feats, protos, toy_weights = gsp.toy_transport_example(mus=(1.0, 0.5, 0.25), gamma=10.0)
fig = vg.plot_toy_transport(feats, protos, toy_weights)
plt.show()

# %% [markdown]
# The whole problem reduces to one scalar equation per image, Σ_i σ(log β + log s_i) = μ n.
# The authors iterate a fixed point for 100 steps; labkit solves the same equation by a
# safeguarded Newton method, and its gradient has a closed form from the KKT conditions, so
# backpropagation never unrolls the loop (details in `docs/methods/gsp.md`). Its speed is
# judged against the authors' implementation (their 100 iterations with their closed-form
# backward; for the backward alone, autograd through those iterations), as `labkit bench gsp`
# measures and the README records; the bench's other baselines are context. These facts are
# exact and checked here on random inputs:

# %%
# NBVAL_CHECK_OUTPUT
for name, ok in gsp.identity_checks().items():
    print(f"{name:40s} {ok}")

# %% [markdown]
# ## 2 · GAP vs GSP on unseen classes
#
# Zero-shot split of the embedded `mnist5k`: train on digits 0-4, retrieve among digits 5-9
# that the network never saw. Same small VGG backbone (7×7 map), same 1×1 projection; the
# only change is the pooling: **gap** is the GSP layer at μ = 1 (exactly GAP), **gsp** uses
# μ = 0.3, γ = 5 (γ = 0.5 for proxy-anchor, as in the authors' scripts), **gsp+zsr** adds the
# zero-shot loss with weight 0.1. Losses from pytorch-metric-learning; batches of 4 classes ×
# 8 images (the profile's epochs, batches and seeds are printed with the table; runs are
# cached, so re-running this notebook only re-draws).

# %%
settings, grid = gx.Settings.for_profile(), gx.EXPERIMENT.grid()
results = gx.sweep(progress=False)
summary = gx.summary(results)
print(f"{settings.dataset}, seeds {grid['seed']}, {settings.epochs} epochs x "
      f"{settings.batches_per_epoch} batches; retrieval on the unseen classes (%)\n")
print(gx.table(summary))

# %%
fig = report.plot_grouped_bars(summary, ("recall@1", "map@r"))
plt.show()
fig = report.plot_recall_curves(summary)
plt.show()

# %% [markdown]
# Does GSP beat GAP on recall@1 for each loss? The gain paired by seed (the variant minus GAP
# on the same seed), its spread, and on how many seeds the variant scored higher:

# %%
for claim, per_loss in gx.claims(summary).items():
    for loss, gain in per_loss.items():
        print(f"{claim:14s} {loss:17s} {gain.format(100)} points")

# %% [markdown]
# ## 3 · What GSP keeps on an unseen digit
#
# The trained GSP network (contrastive loss) on a test digit it never saw. The grid re-solves
# the transport with the trained prototypes for several μ (columns; μ = 1 is GAP's uniform
# weighting) and γ (rows: γ = 1, the trained γ = 5, γ = 20, and the "selective" γ defined
# below). Each panel's colour scale runs from 0 (dropped) to 1/μ (fully kept). Then the
# prototypes that receive most of the mass at the trained setting.

# %%
# headline figure
run = next(r for r in results if r.settings.variant == "gsp")  # the first loss, seed 0
model = run.model()
_, test = gx.load_split(run.settings)
image = test.images[7]
costs, shape = gsp.image_costs(model.backbone, model.neck, image)
selective = gsp.selective_gamma(costs)
fig = vg.plot_weight_grid(image, gsp.weight_grid(costs, shape, (1.0, 0.5, 0.3, 0.1),
                                                 (1.0, model.neck.gamma, 20.0, selective)))
plt.show()
weights, maps = gsp.weight_map(costs, model.neck.mu, model.neck.gamma, shape)
fig = vg.plot_prototype_maps(image, maps, top=6)
plt.show()

# %% [markdown]
# What matters is γ times the spread of the costs. This layer's costs barely differ between
# features (the standard deviation is printed below), so at the trained γ = 5 every μ weighs
# them almost uniformly, like GAP. The explorer opens at the γ where they differ by about 10
# nats (`gsp.selective_gamma`, 10 / std), so that moving μ visibly changes which cells are kept.
# Move μ and γ (needs a live kernel); only the transport is re-solved.

# %%
print(f"cost spread (std) {float(costs.std()):.3f}: the explorer opens at "
      f"γ = {selective:g} (trained: {model.neck.gamma:g})")
explorer = wg.TransportExplorer(costs, image, shape, mu=0.3)
display(explorer.widget)

# %% [markdown]
# The same weight maps as a slider that plays without a kernel: move it through the (μ, γ)
# grid; within each γ the steps go from μ = 1 down to μ = 0.1.

# %%
slider_mus = (1.0, 0.5, 0.3, 0.2, 0.1)
slider_gammas = sorted({1.0, model.neck.gamma, 20.0, selective})
show(vg.weight_map_slider(image, gsp.weight_grid(costs, shape, slider_mus, slider_gammas),
                          active=(model.neck.mu, selective)))

# %% [markdown]
# ## 4 · Does GSP ignore the background?
#
# Weights over 16 unseen test digits (scale 0 … 1/μ), and the mean weight on conv-map cells
# that cover ink vs. cells that cover black background, over 500 unseen test digits.

# %%
order = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
sample = test.images[order[:16]]
fig = vg.plot_weight_overlays(sample, gsp.weight_maps(model, sample), mu=model.neck.mu, ncols=8)
plt.show()
probe = test.images[order[:500]]
shares = {}
for gamma in (model.neck.gamma, 20.0):
    shares[gamma] = gsp.foreground_weight_share(model, probe, gamma=gamma)
    ink, background = shares[gamma]
    print(f"mu = {model.neck.mu}, gamma = {gamma:4.1f}: mean weight on ink cells {ink:.2f}, "
          f"on background cells {background:.2f} (GAP: 1.00 everywhere)")

# %% [markdown]
# **What we see.** Hardly: in the stored run ink cells and background cells both get a mean
# weight of 1.00 at the trained γ = 5; re-solving with the same prototypes at γ = 20 sharpens
# the maps (third row of the grid in §3) and tips the balance only to 1.03 against 0.99. After
# this short training the prototypes are not "digit part" detectors, and on MNIST there is
# nothing to drop but black, which GAP averages away cheaply. The next section gives GSP
# something to drop.

# %% [markdown]
# ## 5 · Cluttered digits: where keeping the right features should pay
#
# On plain MNIST there is nothing to drop but black. `cluttered_mnist5k` puts each digit at a
# random place on a 60×60 canvas among eight 8×8 fragments cut from other digits of the same
# split (the cluttered MNIST of Mnih et al., 2014), and knows the placed digit's pixels (its
# mask). Same protocol: train on digits 0-4, retrieve among unseen 5-9, contrastive loss, the
# same seeds; the VGG's map is now 15×15. If GSP keeps the digit and drops the clutter, it
# should gain here, and its weight should sit on the digit more than GAP's uniform weights do
# (GAP's share is the mask's share of the map: the chance level).

# %%
cluttered = gx.Settings.for_profile(dataset="cluttered_mnist5k")
clutter_runs = gx.sweep(cluttered, variant=gx.VARIANTS, seed=grid["seed"], progress=False)
clutter_summary = gx.summary(clutter_runs)
print(f"cluttered_mnist5k (60×60), seeds {grid['seed']}; retrieval on the unseen classes (%)\n")
print(gx.table(clutter_summary))
for claim, per_loss in gx.claims(clutter_summary).items():
    for loss, gain in per_loss.items():
        print(f"{claim:14s} {loss:17s} {gain.format(100)} points")

# %%
_, clutter_test = gx.load_split(cluttered)
clutter_probe = clutter_test.take(range(0, len(clutter_test), 5))  # 500 unseen images
clutter_image = clutter_probe.images[3]
mass = {}
for r in clutter_runs:
    if r.settings.variant == "gap":
        continue
    net = r.model()
    sharp = gsp.selective_gamma(gsp.image_costs(net.backbone, net.neck, clutter_image)[0])
    for label, gamma in (("trained γ", None), ("selective γ", sharp)):
        share, chance = gsp.mass_on_object(net, clutter_probe.images, clutter_probe.masks,
                                           gamma=gamma)
        mass.setdefault((r.settings.variant, label), []).append(
            (float(share.mean()), float(chance.mean())))
print("share of GSP's pooling weight on the digit, mean ± std over seeds (chance = the digit's "
      "share of the map, GAP's)")
mass_rows = {key: (spread(v[0] for v in values), spread(v[1] for v in values))
             for key, values in mass.items()}
for (variant, label), (on_digit, chance) in mass_rows.items():
    print(f"{variant:8s} {label:12s} {on_digit.format(100, 1)} %   chance {chance.mean:.1%}   "
          f"ratio {on_digit.mean / chance.mean:.2f}")

# %% [markdown]
# The seed-0 GSP network on eight cluttered unseen digits: its weights (scale 0 … 1/μ) at the
# trained γ, then the (μ, γ) slider and the live explorer on one cluttered digit (the explorer
# opens at its selective γ).

# %%
clutter_run = next(r for r in clutter_runs if r.settings.variant == "gsp")
clutter_model = clutter_run.model()
some = clutter_probe.images[torch.randperm(len(clutter_probe),
                                           generator=torch.Generator().manual_seed(0))[:8]]
fig = vg.plot_weight_overlays(some, gsp.weight_maps(clutter_model, some),
                              mu=clutter_model.neck.mu, ncols=8)
plt.show()
clutter_costs, clutter_shape = gsp.image_costs(clutter_model.backbone, clutter_model.neck,
                                               clutter_image)
clutter_selective = gsp.selective_gamma(clutter_costs)
show(vg.weight_map_slider(clutter_image,
                          gsp.weight_grid(clutter_costs, clutter_shape, slider_mus,
                                          sorted({1.0, clutter_model.neck.gamma, 20.0,
                                                  clutter_selective})),
                          active=(clutter_model.neck.mu, clutter_selective)))
display(wg.TransportExplorer(clutter_costs, clutter_image, clutter_shape, mu=0.3).widget)

# %% [markdown]
# **What we see.** The mechanism does what the paper says it should, the benefit does not
# show. At the trained γ = 5, GSP's weight on the digit is 5.6 ± 0.9 % of the map over three
# seeds, against the 3.8 % a uniform (GAP) weighting gives: 1.5 times chance, with ZSR 1.3
# times. Re-solved at each network's selective γ (where its costs differ by about 10 nats),
# the share rises to 9.8 ± 3.7 % (2.5 times chance). Retrieval on the unseen cluttered digits
# moves little: recall@1 is 44.0 ± 2.7 for GAP, 44.6 ± 5.9 for GSP and 46.5 ± 5.7 for GSP+ZSR;
# the paired gains over GAP are +0.6 ± 4.4 and +2.5 ± 3.3 points, each positive on two of three
# seeds. So on cluttered digits GSP does prefer the digit to the clutter, but after 80 steps
# the preference is weak (most of its weight still lies on clutter and black), and the seeds
# vary more than GSP gains. In the paper's setting the backbone is pretrained and the classes
# are fine-grained; here neither holds. One caveat of the zero-shot split on this set: a
# training image's fragments can be cut from digits of the unseen classes (8×8 pieces of the
# same mnist5k split, never whole digits).

# %% [markdown]
# ## Results

# %%
print(f"{settings.dataset} zero-shot split, seeds {grid['seed']}, {settings.epochs} epochs x "
      f"{settings.batches_per_epoch} batches; unseen classes, mean ± std over seeds (%)")
for metric in ("recall@1", "map@r"):
    print(f"\n{metric:17s}" + "".join(f"{v:>14s}" for v in gx.VARIANTS))
    for loss in grid["loss"]:
        print(f"{loss:17s}" + "".join(f"{summary.stats[(loss, v)][metric].format(100, 1):>14s}"
                                      for v in gx.VARIANTS))
print(f"\none unseen digit: cost std {float(costs.std()):.3f}, trained γ = {model.neck.gamma:g}, "
      f"selective γ = {selective:g}")
for gamma, (ink, background) in shares.items():
    print(f"mean weight at γ = {gamma:g}: ink cells {ink:.2f}, background cells {background:.2f}")
print("\ncluttered_mnist5k, recall@1 (%): " + ", ".join(
    f"{v} {clutter_summary.stats[('contrastive', v)]['recall@1'].format(100, 1)}"
    for v in gx.VARIANTS))
for (variant, label), (on_digit, chance) in mass_rows.items():
    print(f"weight on the digit, {variant} at the {label}: {on_digit.format(100, 1)} % "
          f"(chance {chance.mean:.1%})")

# %% [markdown]
# **Reading the stored `lab` run** (seeds 0, 1, 2; 80 training steps of a tiny CPU network per
# run). On recall@1, plain GSP beats GAP for contrastive (87.5 vs 86.3), triplet (89.7 vs 87.9)
# and proxy-anchor (89.7 vs 88.7) and loses for multi-similarity (88.0 vs 89.0). Paired by
# seed, the gains are +1.2 ± 1.7 (2 of 3 seeds), +1.8 ± 1.5 (3 of 3), +1.0 ± 1.1 (2 of 3) and
# −1.0 ± 0.9 (0 of 3) points; GSP+ZSR's are +1.9 ± 1.6 (3 of 3), +1.6 ± 2.3, +0.7 ± 0.8 and
# −0.4 ± 2.0. Only triplet (plain GSP) and contrastive (GSP+ZSR) gain on every seed, by less
# than two points; every gain is within about one standard deviation of its paired
# differences. So this run neither confirms nor refutes the paper's claim of consistent gains,
# which was made on CUB, Cars, SOP and In-Shop with ImageNet backbones. The weight maps say why
# the gaps are small: the trained costs of a digit are nearly flat (std 0.161), so at the
# trained γ = 5 the transport keeps almost every cell and GSP pools almost like GAP; μ only
# starts to select near γ = 62. On cluttered digits (§5) GSP's weight does favour the digit,
# but the retrieval gain stays inside the seeds' spread. How single numbers moved between
# re-executions of this notebook is recorded in `docs/findings/04_generalized_sum_pooling.md`.

# %% [markdown]
# ## Exercises
#
# 1. **Where does μ act?** In the slider above, step through μ at γ = 5 and then at the
#    selective γ. Look for the share of kept cells in the title. *Hint:* what counts is
#    γ · std(c); at γ = 5 that product is below 1 for this layer.
# 2. **Train with a sharper transport.** `gx.run(settings.replace(gamma=50.0))` trains one
#    cached run (its `.model()` rebuilds the network); compare its recall@1 with the table and
#    the std of its costs on the same digit (`gsp.image_costs`). *Hint:* does training spread the
#    costs apart, or shrink them until γ · std(c) is small again?
# 3. **μ = 1 is GAP.** `gx.run(settings.replace(mu=1.0)).metrics` should reproduce the
#    GAP row for seed 0 exactly. *Hint:* at μ = 1 the layer returns the mean of the projected
#    features, whatever its prototypes.
# 4. **Background at the selective γ.** Call
#    `gsp.foreground_weight_share(model, probe, gamma=selective)`. A layer that ignores the
#    background would give ink cells more than 1 and background cells less. *Hint:* the weights
#    average 1 over each image, so the two numbers cannot both move up.
# 5. **Enough seeds?** `gx.sweep(variant=gx.VARIANTS, seed=range(10))` before trusting a gap
#    of a point or two;
#    `LABKIT_PROFILE=full` switches to CIFAR-100 (50/50 classes) with a ResNet-18 (GPU
#    recommended). *Hint:* compare each gap with the standard deviations, not with zero.
