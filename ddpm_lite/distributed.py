"""Multi-process data-parallel training helpers (torchrun + DistributedDataParallel).

Launch any number of processes with torchrun; each one trains a full copy of the model on its own share of
the batches, and DDP averages the gradients across processes after every backward pass, so the copies stay
identical:

    torchrun --nproc_per_node 4 -m ddpm_lite train --dataset mnist

torchrun tells every process who it is through environment variables: RANK (0 … WORLD_SIZE−1, unique across
all machines), WORLD_SIZE (the number of processes) and LOCAL_RANK (the index on this machine, used to pick
the GPU). The backend is NCCL on CUDA GPUs and gloo on CPUs. Rank 0 is the *main* process: only it prints
the progress bar and writes checkpoints and sample grids.

Without torchrun (WORLD_SIZE unset or 1) every helper here is a cheap no-op, so the same training code runs
in a notebook, a script or under torchrun.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """Where this process stands: rank, world size, local rank, and whether *we* started the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank / world size / local rank from torchrun's environment variables (defaults: a single process)."""
    def read(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        try:
            return int(value) if value != "" else default
        except ValueError:
            raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None

    world_size = read("WORLD_SIZE", 1)
    rank = read("RANK", 0)
    local_rank = read("LOCAL_RANK", rank)
    if not 0 <= rank < max(world_size, 1):
        raise ValueError(f"RANK={rank} must lie in [0, WORLD_SIZE={world_size}); launch with torchrun")
    return DistInfo(rank, world_size, local_rank)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def setup(device_type: str | None = None) -> DistInfo:
    """Join the process group if torchrun started us (WORLD_SIZE > 1); a no-op otherwise.

    device_type: "cuda" picks the NCCL backend and binds this process to GPU LOCAL_RANK; anything else gloo.
    If the group is already initialized (by your own code) it is used as is and left for you to destroy.
    """
    if is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    info = env_info()
    if not info.enabled:
        return info
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed support")
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise RuntimeError("WORLD_SIZE > 1 but MASTER_ADDR / MASTER_PORT are not set: launch with torchrun, "
                           "e.g. `torchrun --nproc_per_node 2 -m ddpm_lite train`")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    info.owns_group = True
    return info


def cleanup(info: DistInfo | None = None) -> None:
    """Destroy the process group if `setup` created it."""
    if info is not None and info.owns_group and is_initialized():
        dist.destroy_process_group()
        info.owns_group = False


def barrier() -> None:
    """Wait until every process gets here (no-op without a process group)."""
    if is_initialized():
        dist.barrier()


def _comm_device(device: torch.device | str) -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU tensors
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_true(flag: bool, device="cpu") -> bool:
    """True on every process if `flag` is True on any process (e.g. "out of time: stop")."""
    if not is_initialized():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_comm_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_across(value: float, device="cpu") -> float:
    """The mean of a float over all processes (e.g. the logged loss)."""
    if not is_initialized():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def all_gather_bytes(t: torch.Tensor, device="cpu") -> list[torch.Tensor]:
    """Every process's copy of a 1-D uint8 tensor (all the same length; e.g. RNG states), on the CPU."""
    if not is_initialized():
        return [t.clone()]
    t = t.to(_comm_device(device))
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [o.cpu() for o in out]
