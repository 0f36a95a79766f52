"""Multi-process training helpers: process-group set-up for ``torchrun`` and BatchNorm over the global batch.

The same training script runs single-process (no launcher) or under ``torchrun --nproc-per-node K``;
``torchrun`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` and :func:`init_distributed` joins the group
(NCCL on CUDA, gloo on CPU). BatchNorm statistics must cover the *global* batch for a K-process run to
match a one-process run with the same global batch: on CUDA this is ``torch.nn.SyncBatchNorm``; on CPU,
where SyncBatchNorm is not supported, :class:`GlobalBatchNorm2d` computes them with differentiable
all-reduces.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistributedContext", "init_distributed", "max_over_processes", "GlobalBatchNorm2d", "use_global_batchnorm"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``device`` it computes on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | torch.device = "cpu") -> DistributedContext:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); otherwise a 1-process context.

    On CUDA each process uses ``cuda:LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device(device)
    if world_size <= 1:
        return DistributedContext(0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(dist.get_rank(), dist.get_world_size(), device)


def max_over_processes(value: int, device: str | torch.device = "cpu") -> int:
    """The largest of every process's ``value`` (one all-reduce); ``value`` itself outside a process group.

    The processes of a DDP run must stop, checkpoint and evaluate at the same step, or the others wait forever
    in their next collective: a decision taken on something local (a wall clock, a signal) goes through here,
    e.g. ``max_over_processes(out_of_time)`` stops every process when one of them is out of time.

    Args:
        value: a non-negative integer (a bool, a signal number, ...).
        device: where the collective runs: the CPU for gloo, this process's GPU for NCCL.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return int(value)
    flag = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of a sum over processes is the sum of the gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the batches of all processes (any device, gloo included).

    Same parameters and buffers as ``nn.BatchNorm2d`` (state dicts are interchangeable). Outside a
    multi-process group, or in eval mode, it is exactly ``nn.BatchNorm2d``. Mean and variance are
    summed over processes by an all-reduce whose backward is an all-reduce too, so gradients equal
    those of one process holding the whole batch.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        xf = x.float()
        count = torch.tensor([xf.numel() / xf.shape[1]], device=x.device)
        dist.all_reduce(count)
        mean = all_reduce(xf.sum(dim=(0, 2, 3))) / count
        centred = xf - mean[None, :, None, None]
        var = all_reduce(centred.pow(2).sum(dim=(0, 2, 3))) / count
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach().to(self.running_mean), momentum)
            unbiased = var.detach() * count / (count - 1).clamp_min(1)
            self.running_var.lerp_(unbiased.to(self.running_var), momentum)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        return (y * self.weight[None, :, None, None] + self.bias[None, :, None, None]).to(x.dtype)


def use_global_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Swap every ``nn.BatchNorm2d`` for a global-batch version (SyncBatchNorm on CUDA, else
    :class:`GlobalBatchNorm2d`), keeping parameters and statistics. Returns the module."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                            child.track_running_stats, device=device)
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement)
        else:
            use_global_batchnorm(child, device)
    return module
