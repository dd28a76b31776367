"""torch.distributed support: torchrun's environment, the process group, data sharding and the few
collectives recovery needs. Under `torchrun --nproc_per_node=N -m graphsurg recover ...` every rank
runs the same command; gloo is used on CPU, nccl on GPU; only rank 0 writes files.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from graphsurg.errors import UsageError
from graphsurg.train.interpreter import CONTROL_FLOW


@dataclass(frozen=True)
class Placement:
    """Where this process runs: its rank among `world` processes and its torch device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def choose_device(requested: str, local_rank: int) -> torch.device:
    """`cpu`, `cuda` (an error without a GPU) or `auto`; under torchrun each rank takes its local GPU."""
    if requested not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device {requested!r}: choose auto, cpu or cuda")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no GPU (a CPU-only torch, or no CUDA device)")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def setup(device: str = "auto") -> Placement:
    """Joins the process group torchrun describes (WORLD_SIZE > 1), or runs as a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = choose_device(device, local_rank)
    if world <= 1:
        return Placement(device=chosen)
    if not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        dist.init_process_group(backend=backend)
    return Placement(dist.get_rank(), dist.get_world_size(), local_rank, chosen)


def teardown(placement: Placement) -> None:
    if placement.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_share(batch: np.ndarray, placement: Placement) -> np.ndarray:
    """This rank's contiguous slice of a global batch (the global batch divides evenly by the world)."""
    size = len(batch) // placement.world
    return batch[placement.rank * size:(placement.rank + 1) * size]


def strided_share(indices: np.ndarray, placement: Placement) -> np.ndarray:
    return indices[placement.rank::placement.world]


def gather_rows(arrays: list[np.ndarray], placement: Placement) -> list[np.ndarray]:
    """Concatenates every rank's arrays (in rank order) on every rank."""
    if placement.world == 1:
        return arrays
    collected: list = [None] * placement.world
    dist.all_gather_object(collected, arrays)
    return [np.concatenate([part[i] for part in collected]) for i in range(len(arrays))]


class _AllReduceSum(torch.autograd.Function):
    """A differentiable sum across ranks: every rank's input reaches every rank's output, so the
    gradient of an input is the sum of the output gradients of all ranks."""

    @staticmethod
    def forward(ctx, tensor):
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad):
        total = grad.clone()
        dist.all_reduce(total)
        return total


def sync_batch_norm(x, scale, bias, running_mean, running_var, momentum: float, eps: float):
    """Batch normalization on the statistics of the global batch (summed across ranks, with
    gradients flowing through the all-reduce), so N ranks train like one process on their union."""
    dims = [0] + list(range(2, x.dim()))
    channels = x.shape[1]
    count = torch.full((1,), x.numel() / channels, dtype=x.dtype, device=x.device)
    totals = _AllReduceSum.apply(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
    n = totals[-1]
    mean = totals[:channels] / n
    var = totals[channels:2 * channels] / n - mean * mean
    if running_mean is not None:
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
            running_var.mul_(1 - momentum).add_(var.detach() * (n / (n - 1)), alpha=momentum)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = (x - mean.reshape(shape)) * torch.rsqrt(var + eps).reshape(shape)
    return y * scale.reshape(shape) + bias.reshape(shape)


def wrap(module: torch.nn.Module, placement: Placement) -> torch.nn.Module:
    """DistributedDataParallel around `module` when there are several ranks. Buffers are not
    re-broadcast each step: synchronized BatchNorm keeps the running statistics equal everywhere."""
    if placement.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    devices = [placement.device] if placement.device.type == "cuda" else None
    parameters = inspect.signature(DistributedDataParallel).parameters
    # torch >= 2.13 spells the switch forward_sync_buffers (it still syncs once at start, harmlessly).
    option = {"forward_sync_buffers": False} if "forward_sync_buffers" in parameters else {"broadcast_buffers": False}
    # Parameters that only feed a frozen If/Loop/Scan region get no gradient; DDP must expect that.
    unused = any(op.op_type in CONTROL_FLOW for op in module.model.graph.ops)
    return DistributedDataParallel(module, device_ids=devices, find_unused_parameters=unused, **option)
