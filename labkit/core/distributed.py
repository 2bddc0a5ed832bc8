"""Distributed helpers for `labkit train`: torchrun's environment, the process group, collectives
that carry gradients, batch norm over the global batch, and class shards of a global batch.

The scheme: every rank draws the same global batch from the same seeded sampler and keeps its
share of it: the classes r, r + W, ... (W ranks, classes in their order in the batch) of an
m-per-class batch, or the r-th contiguous slice of a plain shuffled batch. Each rank embeds its
share; `gather_batch` puts the embeddings back in the global batch's order, with gradients, and
every rank computes the loss of the whole global batch. A gather's backward sums what all ranks'
(identical) copies of the loss send back, W times the gradient of one copy, and DDP's gradient
averaging divides the W out: a step is the single-process step on the global batch. Batch norm
(`GlobalBatchNorm`) and dropout (`GlobalDropout`) see the global batch too: the statistics of all
ranks' rows, and the rows of the mask one process would draw.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from labkit.core import config


@dataclass(frozen=True)
class Ranks:
    """Where this process sits: its rank among `world_size`, its rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun: DDP even with a single rank

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def ranks_from_env(environ: Mapping[str, str] = os.environ) -> Ranks:
    """The ranks torchrun exports (RANK, WORLD_SIZE, LOCAL_RANK); one plain process without them."""
    if "WORLD_SIZE" not in environ:
        return Ranks()
    rank, world = int(environ.get("RANK", "0")), int(environ["WORLD_SIZE"])
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} do not fit together")
    return Ranks(rank, world, int(environ.get("LOCAL_RANK", "0")), launched=True)


def device_for(ranks: Ranks) -> torch.device:
    """`config.get_device()`, with one GPU per local rank under torchrun."""
    device = config.get_device()
    if ranks.launched and device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[Any]:
    """The default process group (NCCL on CUDA, gloo on the CPU) for the block; yields a second
    group for the embedding collectives, so they never queue behind DDP's own gradient
    all-reduces. Yields None outside torchrun."""
    if not ranks.launched:
        yield None
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    options = {}
    if device.type == "cuda" and "device_id" in inspect.signature(dist.init_process_group).parameters:
        options["device_id"] = device  # binds NCCL to this rank's GPU up front (torch >= 2.3)
    dist.init_process_group(backend, **options)
    try:
        yield dist.new_group(backend=backend)
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- collectives

class _GatherWithGrad(torch.autograd.Function):
    """All ranks' (b, ...) tensors stacked rank by rank (W b, ...); the backward hands each rank
    the sum over ranks of the gradient of its rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group, ctx.rank, ctx.rows = group, dist.get_rank(group), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()  # the collective writes in place
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows], None


# torch.distributed.nn.functional has differentiable collectives, but 2.14 deprecates them in
# favour of a private module; this small Function is all the loop needs.

def gather_batch(outputs: Sequence[torch.Tensor], shards: Sequence[Sequence[int]],
                 group: Any) -> tuple[torch.Tensor, ...]:
    """The global batch's rows (B, ...) of each output, in the batch's own order, from each
    rank's rows (B / W, ...) at the positions `shards[rank]`; gradients flow back to every
    rank's rows. Outputs of one dtype travel in one collective."""
    rows = outputs[0].shape[0]
    if len({o.dtype for o in outputs}) == 1:
        widths = [o[0].numel() for o in outputs]
        flat = torch.cat([o.reshape(rows, -1) for o in outputs], dim=1)
        parts = _GatherWithGrad.apply(flat, group).split(widths, dim=1)
        stacked = [p.reshape(-1, *o.shape[1:]) for p, o in zip(parts, outputs, strict=True)]
    else:
        stacked = [_GatherWithGrad.apply(o, group) for o in outputs]
    positions = torch.tensor([p for shard in shards for p in shard])
    order = torch.empty_like(positions)
    order[positions] = torch.arange(len(positions))
    order = order.to(outputs[0].device)
    return tuple(s[order] for s in stacked)


def average_gradients(params: Sequence[torch.Tensor], group: Any) -> None:
    """Average the gradients of parameters that live outside DDP (a loss's proxies) over ranks.

    Every rank computed the same global loss, so these gradients agree already; averaging keeps
    the ranks' copies equal even where a kernel is not bitwise deterministic."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    flat /= dist.get_world_size(group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def gather_objects(obj: Any, ranks: Ranks) -> list[Any]:
    """`obj` of every rank, in rank order (a list of one outside torchrun)."""
    if not ranks.launched:
        return [obj]
    out: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------- batch norm

class GlobalBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of the global batch, over all ranks.

    torch's SyncBatchNorm does this on GPUs only; this one runs on any device (gloo on the CPU)
    and takes over the parameters and buffers of the BatchNorm it replaces, so state dicts load
    either way. Statistics are in float32: each rank's mean and centred sum of squares, gathered
    in one collective (one more in the backward) and combined into the global batch's.
    """

    def __init__(self, source: _BatchNorm, group: Any) -> None:
        super().__init__(source.num_features, source.eps, source.momentum, source.affine,
                         source.track_running_stats)
        self.weight, self.bias = source.weight, source.bias
        self.running_mean, self.running_var = source.running_mean, source.running_var
        self.num_batches_tracked = source.num_batches_tracked
        self.group = group
        self.train(source.training)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected (N, C, ...) input, got shape {tuple(input.shape)}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or dist.get_world_size(self.group) == 1:
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        channels = input.shape[1]
        x = input.float()
        # each rank's count, mean and centred sum of squares in one gather; combined as in
        # Chan et al.'s parallel variance, which stays accurate where E[x^2] - E[x]^2 would not
        local_mean = x.mean(dims)
        local_m2 = (x - local_mean.view(shape)).square().sum(dims)
        count = x.new_tensor([x.numel() // channels])
        stats = _GatherWithGrad.apply(torch.cat([local_mean, local_m2, count])[None], self.group)
        means, m2s, counts = stats[:, :channels], stats[:, channels:-1], stats[:, -1:].detach()
        total = counts.sum()
        mean = (counts * means).sum(0) / total
        var = (m2s.sum(0) + (counts * (means - mean).square()).sum(0)) / total
        out = (x - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                          else self.momentum)
                unbiased = var * (total / (total - 1).clamp(min=1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return out.to(input.dtype)


def convert_batchnorm(module: nn.Module, group: Any) -> nn.Module:
    """Replace every BatchNorm inside `module` (in place) by a `GlobalBatchNorm` on `group`.

    The new modules hold the same parameter objects, so optimisers and gradient hooks made
    before the conversion keep working."""
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, GlobalBatchNorm):
            setattr(module, name, GlobalBatchNorm(child, group))
        else:
            convert_batchnorm(child, group)
    return module


# ----------------------------------------------------------------------------- dropout

# (rows of the global batch, this rank's positions in it (b,) on the device) while the loop runs a
# rank's forward; None elsewhere
_LAYOUT: contextvars.ContextVar[tuple[int, torch.Tensor] | None] = contextvars.ContextVar(
    "labkit_batch_layout", default=None)


@contextlib.contextmanager
def batch_layout(rows: int, positions: Sequence[int], device: torch.device) -> Iterator[None]:
    """Within the block, `GlobalDropout` treats its (b, ...) input as the rows `positions` of a
    global batch of `rows`."""
    token = _LAYOUT.set((rows, torch.as_tensor(positions, device=device)))
    try:
        yield
    finally:
        _LAYOUT.reset(token)


class GlobalDropout(nn.Dropout):
    """Dropout that keeps, for a rank's rows, the mask one process draws for the global batch.

    Every rank draws the whole batch's mask (B, ...) from its generator, as `F.dropout` does on
    the CPU (Bernoulli(1 - p) noise of the input's shape, divided by 1 - p), and multiplies its
    rows by theirs: W ranks drop what one process drops, and their generators stay in step with
    it. On CUDA the mask comes from the fused kernel `F.dropout` uses there, drawn on the global
    shape and layout (the same mask as far as that kernel draws alike for alike shapes). Outside
    `batch_layout`, or in eval mode, it is plain dropout."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        layout = _LAYOUT.get()
        if layout is None or not self.training or self.p == 0:
            return F.dropout(input, self.p, self.training, self.inplace)
        rows, positions = layout
        shape = (rows, *input.shape[1:])
        if self.p == 1:
            return input * torch.zeros((), dtype=input.dtype, device=input.device)
        if input.device.type == "cuda":
            layout_format = (torch.channels_last if input.dim() == 4 and not input.is_contiguous()
                             and input.is_contiguous(memory_format=torch.channels_last)
                             else torch.contiguous_format)
            ones = torch.ones(shape, dtype=input.dtype, device=input.device).contiguous(
                memory_format=layout_format)
            noise = torch.native_dropout(ones, self.p, True)[0]
        else:
            noise = input.new_empty(shape).bernoulli_(1 - self.p).div_(1 - self.p)
        return input * noise[positions]


def convert_dropout(module: nn.Module) -> nn.Module:
    """Replace every `nn.Dropout` inside `module` (in place) by a `GlobalDropout` of the same p.

    Other dropout kinds (2-d, alpha, ...) draw masks that this does not reproduce: they are
    refused rather than left to draw per-rank masks."""
    for name, child in module.named_children():
        if type(child) is nn.Dropout:
            setattr(module, name, GlobalDropout(child.p, child.inplace))
        elif isinstance(child, _DropoutNd) and not isinstance(child, GlobalDropout):
            raise ValueError(f"{name}: {type(child).__name__} cannot yet draw the global batch's "
                             "mask over several ranks (only nn.Dropout can)")
        else:
            convert_dropout(child)
    return module


# ----------------------------------------------------------------------------- shards

def contiguous_shards(batch_labels: Sequence[int], world_size: int) -> list[list[int]]:
    """Positions in a plain global batch of B for each rank: rank r takes the B / W positions
    r B / W ... (r + 1) B / W - 1 (the labels only give B)."""
    size = len(batch_labels)
    if size % world_size:
        raise ValueError(f"a batch of {size} cannot be shared equally by {world_size} ranks")
    share = size // world_size
    return [list(range(r * share, (r + 1) * share)) for r in range(world_size)]


def class_shards(batch_labels: Sequence[int], world_size: int) -> list[list[int]]:
    """Positions in a global batch for each rank: rank r takes every sample of the batch's
    classes r, r + W, ... (classes in order of first appearance), in batch order.

    Whole classes stay on one rank, and a batch that starts with one representative per class
    (APFS) gives every rank a batch that starts with its classes' representatives."""
    first_seen: dict[int, int] = {}
    for label in batch_labels:
        first_seen.setdefault(int(label), len(first_seen))
    if len(first_seen) % world_size:
        raise ValueError(f"a batch of {len(first_seen)} classes cannot be shared by "
                         f"{world_size} ranks class by class")
    shards: list[list[int]] = [[] for _ in range(world_size)]
    for position, label in enumerate(batch_labels):
        shards[first_seen[int(label)] % world_size].append(position)
    sizes = sorted({len(shard) for shard in shards})
    if len(sizes) > 1:
        raise ValueError(f"the classes of this batch give the ranks unequal shares {sizes}: "
                         "every class needs the same number of samples in a batch")
    return shards


# ----------------------------------------------------------------------------- random state

def rng_state(device: torch.device) -> dict[str, Any]:
    """The python, numpy (global), torch and, on CUDA, `device`'s generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore what `rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
