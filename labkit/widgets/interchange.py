"""A map explorer for notebook 03: pick source, target and map method; see what survives.

`explorer_figure` is the static version (also the GitHub / regression fallback); `MapExplorer`
wraps it in ipywidgets dropdowns and sliders. Fitting a map on cached embeddings takes
milliseconds, so every change re-fits and re-draws.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt

from labkit.methods import interchange as ic
from labkit.methods.interchange_experiments import Zoo, evaluate_map, fit_pair
from labkit.viz.interchange import plot_mapped_scatter
from labkit.widgets.sync import serialized

__all__ = ["explorer_metrics", "explorer_figure", "MapExplorer", "map_explorer"]

_METHODS = ("affine", "ridge", "procrustes", "reduced_rank", "heads (closed form)", "identity")


def explorer_metrics(zoo: Zoo, src: str, dst: str, method: str = "affine", *,
                     rank: int | None = None, alpha: float = 1.0,
                     n_pairs: int | None = None) -> tuple[ic.EmbeddingMap, dict[str, float]]:
    """The map from `src` to `dst` built by `method` and its held-out numbers
    (accuracy, retention, R^2, plus both members' own accuracy and the spaces' linear CKA)."""
    a, b = zoo.member(src), zoo.member(dst)
    if method == "heads (closed form)":
        emb_map = ic.map_from_heads(*(t.double() for t in a.head), *(t.double() for t in b.head))
    elif method == "identity":
        if a.dim != b.dim:
            raise ValueError(f"the identity map needs equal dims, got {a.dim} and {b.dim}")
        emb_map = ic.identity_map(a.dim, dtype=a.test_emb.double().dtype)
    else:
        options: dict[str, Any] = {}
        if method == "ridge":
            options["alpha"] = alpha
        if method == "reduced_rank":
            options["rank"] = rank if rank is not None else min(a.dim, b.dim)
        emb_map = fit_pair(zoo, src, dst, method, n_pairs=n_pairs, **options)
    metrics = evaluate_map(zoo, src, dst, emb_map)
    metrics["source_accuracy"] = a.test_acc
    metrics["cka"] = ic.linear_cka(a.test_emb.double(), b.test_emb.double())
    return emb_map, metrics


def explorer_figure(zoo: Zoo, src: str, dst: str, method: str = "affine", **options: Any
                    ) -> tuple[plt.Figure, dict[str, float]]:
    """Left: B's test embeddings and A's mapped ones in B's top-2 PCA plane. Right: accuracies of
    A, B and A mapped through B's head. Returns (figure, metrics)."""
    emb_map, metrics = explorer_metrics(zoo, src, dst, method, **options)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [3, 2]},
                                      dpi=80)
    a, b = zoo.member(src), zoo.member(dst)
    plot_mapped_scatter(b.test_emb, emb_map(a.test_emb.double()), zoo.test_labels, ax=left,
                        title=f"{src} -> {dst} ({method})", max_points=300)
    bars = {f"A\n{src}": metrics["source_accuracy"], f"B\n{dst}": metrics["target_accuracy"],
            "A mapped,\nB's head": metrics["accuracy"]}
    right.bar(range(3), list(bars.values()), color=["tab:blue", "tab:orange", "tab:green"])
    right.set_xticks(range(3), list(bars), fontsize=8)
    right.set_ylim(0, 1.05)
    right.set_ylabel("test accuracy")
    right.set_title(f"retention {metrics['retention']:.3f}  R^2 {metrics['r2']:.2f}  "
                    f"CKA {metrics['cka']:.2f}", fontsize=9)
    for i, value in enumerate(bars.values()):
        right.text(i, value + 0.01, f"{value:.3f}", ha="center", fontsize=8)
    fig.tight_layout()
    return fig, metrics


class MapExplorer:
    """ipywidgets front-end of `explorer_figure`: `.widget` to display, `.update()` to redraw."""

    def __init__(self, zoo: Zoo, src: str | None = None, dst: str | None = None) -> None:
        import ipywidgets as w

        names = zoo.names + [m.name for m in zoo.extras.values()]
        self.zoo = zoo
        self.src = w.Dropdown(options=names, value=src or names[0], description="source A")
        self.dst = w.Dropdown(options=names, value=dst or names[min(2, len(names) - 1)],
                              description="target B")
        self.method = w.Dropdown(options=_METHODS, value="affine", description="map")
        max_rank = max(m.dim for m in zoo.members)
        self.rank = w.IntSlider(value=max_rank, min=1, max=max_rank, description="rank",
                                continuous_update=False)
        self.alpha = w.FloatLogSlider(value=1.0, base=10, min=-3, max=5, description="ridge alpha",
                                      continuous_update=False)
        n_train = len(zoo.train_labels)
        self.n_pairs = w.IntSlider(value=n_train, min=min(10, n_train), max=n_train, step=10,
                                   description="fit pairs", continuous_update=False)
        self.output = w.Output()
        self.message = w.HTML()
        self.hint = w.HTML()
        for control in (self.src, self.dst, self.method, self.rank, self.alpha, self.n_pairs):
            control.observe(lambda _change: self.update(), names="value")
        self.widget = w.VBox([w.HBox([self.src, self.dst, self.method]),
                              w.HBox([self.rank, self.alpha, self.n_pairs]), self.hint, self.message,
                              self.output])
        self.metrics: dict[str, float] = {}
        self.update()

    def _enable_applicable(self) -> None:
        """Grey out the sliders the chosen map does not read, and say which ones apply."""
        method = self.method.value
        self.rank.disabled = method != "reduced_rank"
        self.alpha.disabled = method != "ridge"
        self.n_pairs.disabled = method in ("heads (closed form)", "identity")
        live = [c.description for c in (self.rank, self.alpha, self.n_pairs) if not c.disabled]
        self.hint.value = (f"<i>{method}: {', '.join(live)} apply</i>" if live else
                           f"<i>{method}: nothing to fit, so no slider applies</i>")

    @serialized
    def update(self) -> None:
        """Re-fit the chosen map and redraw; a map that cannot be built shows why instead."""
        from IPython.display import display

        self._enable_applicable()
        options: dict[str, Any] = {"n_pairs": self.n_pairs.value}
        if self.method.value == "ridge":
            options["alpha"] = self.alpha.value
        if self.method.value == "reduced_rank":
            dims = (self.zoo.member(self.src.value).dim, self.zoo.member(self.dst.value).dim)
            options["rank"] = min(self.rank.value, *dims)
        if self.method.value in ("heads (closed form)", "identity"):
            options = {}
        self.output.clear_output(wait=True)
        try:
            fig, self.metrics = explorer_figure(self.zoo, self.src.value, self.dst.value,
                                                self.method.value, **options)
        except ValueError as error:
            self.metrics = {}
            self.message.value = f"<b>cannot build this map:</b> {error}"
            return
        self.message.value = ""
        with self.output:
            display(fig)
        plt.close(fig)


def map_explorer(zoo: Zoo, src: str | None = None, dst: str | None = None) -> Any:
    """The explorer widget (display it in a notebook)."""
    return MapExplorer(zoo, src, dst).widget
