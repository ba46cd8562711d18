"""Data-parallel training across processes (DDP's arithmetic, over an initialised torch.distributed group).

The headless trainer under ``accelerate launch`` (or torchrun) starts one process per GPU, or several
on a CPU with gloo; accelerate creates the process group and this module does the rest, so the engine
stays one loop. Every process plans the same global batches (``batch_size`` × processes, one bucket
each, as a single process with that batch would) and draws the same noise and timesteps for them from
the run's generator; each then trains on its own slice. Gradients are summed across processes with
each slice's loss weighted by its share of the batch, which is exactly the gradient of the global
batch's mean loss, so every process takes the same optimizer step and the LoRA weights stay equal
without being broadcast. Only the main process validates, writes files and samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import StyleLoRAError


@dataclass(frozen=True)
class DataParallel:
    """This process's place in the group: ``rank`` of ``world_size`` (one process: 0 of 1, no group)."""

    rank: int = 0
    world_size: int = 1
    device: str = "cpu"  # where collective tensors live (nccl needs them on the process's GPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def global_batch_size(self, per_process: int) -> int:
        return per_process * self.world_size

    def share(self, batch: list[int], per_process: int) -> list[int]:
        """This process's items of a global batch: consecutive slices of ``per_process``; a bucket's last,
        shorter batch leaves the later processes fewer items or none."""
        return batch[self.rank * per_process:(self.rank + 1) * per_process]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In place: the sum over all processes (the tensor itself with one process)."""
        if self.active:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_gradients_(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the processes, in one flat all-reduce (a process with no
        items this step contributes zeros)."""
        if not self.active or not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).to(torch.float32) for g in grads])
        self.sum_(flat)
        offset = 0
        for param, grad in zip(params, grads, strict=True):
            n = grad.numel()
            param.grad = flat[offset:offset + n].view_as(grad).to(grad.dtype)
            offset += n

    def same_everywhere(self, values: list[float], what: str) -> None:
        """Raise if another process holds other ``values`` (e.g. the resume point it found): training would
        diverge or hang. ``what`` names the fix in the message."""
        if not self.active:
            return
        mine = torch.tensor(values, dtype=torch.float64, device=self.device)
        low, high = mine.clone(), mine.clone()
        import torch.distributed as dist

        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise StyleLoRAError(f"The training processes disagree ({what}): process {self.rank} has "
                                 f"{values}, the group between {low.tolist()} and {high.tolist()}.")

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


SINGLE_PROCESS = DataParallel()


def from_process_group(device: torch.device | str = "cpu") -> DataParallel:
    """The initialised torch.distributed group as a ``DataParallel`` (one process when there is none)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return DataParallel(rank=dist.get_rank(), world_size=dist.get_world_size(), device=str(device))
    return SINGLE_PROCESS
