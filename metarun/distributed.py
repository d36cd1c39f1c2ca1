"""Meta-training in several processes (torchrun + `trainer=ddp`): each takes a share of every
meta-batch's tasks and the meta-gradients are averaged, so the update is the one-process update.

Every process draws the same episodes from the same seeded sampler and keeps only its share, so
nothing but gradients, metrics and a stop flag crosses between processes; only rank 0 logs and
writes checkpoints. The single-process case is the same interface doing nothing.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

from metarun.errors import MetarunError


class SingleProcess:
    """One process: every task and every evaluation episode is its own."""

    rank = 0
    world_size = 1
    is_main = True

    def task_slice(self, tasks: int) -> slice:
        """This process's share of a meta-batch of `tasks` tasks."""
        return slice(0, tasks)

    def average_gradients(self, params: list[Tensor]) -> None:
        pass

    def average_buffers(self, module: torch.nn.Module) -> None:
        pass

    def gather_tasks(self, metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-task metrics [T_share] of every process -> [T], in task order."""
        return metrics

    def owns(self, index: int) -> bool:
        """Whether this process evaluates the `index`-th batch of evaluation episodes."""
        return True

    def gather_episodes(self, per_episode: dict[str, list[Tensor]]) -> dict[str, list[Tensor]]:
        """Per-episode metrics of every process's evaluation batches, concatenated."""
        return per_episode

    def any(self, flag: bool) -> bool:
        """True on every process if it is true on any (a stop request reaches all at the same step)."""
        return flag

    def from_main(self, value):
        """Rank 0's value of a picklable object, on every process."""
        return value

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


class Distributed(SingleProcess):
    """A process of a torchrun job: gloo on CPU, NCCL on GPU (one GPU per process, by LOCAL_RANK)."""

    def __init__(self, device: torch.device):
        if "RANK" not in os.environ:
            raise MetarunError("trainer=ddp runs under torchrun: torchrun --nproc_per_node=P -m metarun.cli trainer=ddp ...")
        if device.type == "cuda":
            torch.cuda.set_device(self.device_for(device))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self.device = device

    @staticmethod
    def device_for(device: torch.device) -> torch.device:
        """This process's GPU (LOCAL_RANK), or the CPU."""
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if device.type == "cuda" else device

    def check(self, meta_batch_size: int) -> None:
        if meta_batch_size % self.world_size:
            raise MetarunError(f"trainer.meta_batch_size={meta_batch_size} must be a multiple of the "
                               f"{self.world_size} processes, so each takes an equal share of the tasks")

    def task_slice(self, tasks: int) -> slice:
        share = tasks // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def average_gradients(self, params: list[Tensor]) -> None:
        """One all-reduce of every gradient (a missing one counts as zero) divided by the processes."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.flatten() for g in grads]) / self.world_size
        dist.all_reduce(flat)
        for param, averaged in zip(params, flat.split([p.numel() for p in params])):
            param.grad = averaged.view_as(param)

    def average_buffers(self, module: torch.nn.Module) -> None:
        """Batch norm's running statistics (every floating-point buffer) averaged over the
        processes, so all evaluate the same model; integer buffers (counters) agree already."""
        buffers = [b for b in module.buffers() if b.is_floating_point()]
        if buffers:
            flat = torch.cat([b.flatten() for b in buffers]) / self.world_size
            dist.all_reduce(flat)
            for buffer, averaged in zip(buffers, flat.split([b.numel() for b in buffers])):
                buffer.copy_(averaged.view_as(buffer))

    def gather_tasks(self, metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        gathered = {}
        for name, values in metrics.items():
            parts = [torch.empty_like(values) for _ in range(self.world_size)]
            dist.all_gather(parts, values.contiguous())
            gathered[name] = torch.cat(parts)
        return gathered

    def owns(self, index: int) -> bool:
        return index % self.world_size == self.rank

    def gather_episodes(self, per_episode: dict[str, list[Tensor]]) -> dict[str, list[Tensor]]:
        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, {name: [v.cpu() for v in values] for name, values in per_episode.items()})
        return {name: [v for part in parts for v in part.get(name, [])] for name in parts[0]}

    def any(self, flag: bool) -> bool:
        value = torch.tensor([float(flag)], device=self.device_for(self.device))
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def from_main(self, value):
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        dist.destroy_process_group()
