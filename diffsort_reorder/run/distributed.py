"""One run on several processes: data parallel with torch.distributed, set up from torchrun.

``torchrun --nproc-per-node N -m diffsort_reorder.train ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; each joins one process group (gloo on CPU, NCCL on CUDA,
one GPU per process: ``cuda:LOCAL_RANK``). Without those variables, or with ``WORLD_SIZE=1``, a run
is one process and nothing here communicates: every helper returns its input as it is.

How the ranks stay one run: every rank seeds the same generators and draws the same shapes, so
what an estimator samples once per batch is the same on every rank (and the same as one process
draws); each rank trains on its part of every global batch; the orderer's surrogate term is
computed from the whole global batch's rewards and log-probabilities (:meth:`World.global_batch`);
the gradients are averaged after ``backward`` (an explicit all-reduce, since the model is called
through ``embed``/``answer``/``classify`` rather than one ``forward`` and the orderer's parameters
are unused outside the policy phase, two things ``DistributedDataParallel`` handles badly), so
every rank applies the same step. What is drawn per image is drawn for the whole global batch:
the orderer's ``batch_share`` is ``(rank, world size)``, so every rank makes every rank's draws in
turn from that shared stream and keeps its own share's. The ranks' draws differ, every rank's
random state moves alike, and on the CPU (where torch draws in sequence) they are exactly the
draws one process makes for the global batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from estimators import PermutationOutput


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"the environment variable {name} should be an integer (torchrun sets it) but got "
            f"{value!r}"
        ) from None


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` processes, ``local_rank`` on its
    machine. ``World()`` is a run of one process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> World:
        """The world torchrun's variables describe (one process without them)."""
        environ = os.environ if environ is None else environ
        size = _env_int(environ, "WORLD_SIZE", 1)
        rank, local_rank = _env_int(environ, "RANK", 0), _env_int(environ, "LOCAL_RANK", 0)
        if size < 1 or not 0 <= rank < size or local_rank < 0:
            raise ValueError(
                f"torchrun's variables should have WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE and "
                f"LOCAL_RANK >= 0 but got WORLD_SIZE={size}, RANK={rank}, LOCAL_RANK={local_rank}"
            )
        return cls(rank, size, local_rank)

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, TensorBoard and the result."""
        return self.rank == 0

    def connect(self, device: torch.device) -> torch.device:
        """Join the process group (once) and return this rank's device: ``cuda:LOCAL_RANK`` on
        CUDA. A world of one process joins nothing and keeps ``device``."""
        if self.size == 1:
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            cuda = device.type == "cuda"
            dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
        if dist.get_world_size() != self.size or dist.get_rank() != self.rank:
            raise RuntimeError(
                f"the process group has rank {dist.get_rank()} of {dist.get_world_size()} but "
                f"torchrun's variables say RANK={self.rank}, WORLD_SIZE={self.size}"
            )
        return device

    def broadcast_from_main(self, modules: Iterable[torch.nn.Module]) -> None:
        """Give every rank rank 0's parameters and buffers (they are equal already when built
        from one seed; this makes sure)."""
        if self.size == 1:
            return
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over ranks (a new tensor; ``value`` itself for one process)."""
        if self.size == 1:
            return value
        value = value.detach().clone()
        dist.all_reduce(value)
        return value / self.size

    def total(self, values: list[float]) -> list[float]:
        """Each of ``values`` summed over ranks, in float64 (``values`` for one process)."""
        if self.size == 1:
            return values
        summed = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(summed)
        return summed.tolist()

    def check_same(self, name: str, value: int) -> None:
        """Raise on every rank unless all ranks hold the same ``value`` of ``name``."""
        if self.size == 1:
            return
        both = torch.tensor([value, -value], dtype=torch.int64, device=self._comm_device())
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        high, low = int(both[0]), -int(both[1])
        if high != low:
            raise RuntimeError(
                f"the ranks disagree on {name}: from {low} to {high}; every rank must see the "
                f"same output_dir (a filesystem shared by all the machines)"
            )

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's equal-sized ``x`` concatenated along dim 0, in rank order; gradients flow
        back to this rank's part (see :class:`_Gather`)."""
        return x if self.size == 1 else _Gather.apply(x, self.rank, self.size)

    def global_batch(
        self, out: PermutationOutput, per_sample_loss: torch.Tensor
    ) -> tuple[PermutationOutput, torch.Tensor]:
        """What an orderer's ``surrogate_loss`` reads, for the whole global batch: ``index``,
        ``log_prob`` and the per-sample losses gathered from every rank (``tokens`` and ``soft``
        stay this rank's). A REINFORCE baseline then sees the rewards one process would see."""
        if self.size == 1:
            return out, per_sample_loss
        log_prob = None if out.log_prob is None else self.gather(out.log_prob)
        gathered = replace(out, index=self.gather(out.index), log_prob=log_prob)
        return gathered, self.gather(per_sample_loss)

    def average_gradients(self, modules: Iterable[torch.nn.Module]) -> None:
        """Replace every gradient by its mean over ranks, in one all-reduce per dtype. Every rank
        runs the same code on the same shapes, so the same parameters have gradients."""
        if self.size == 1:
            return
        grads = [p.grad for m in modules for p in m.parameters() if p.grad is not None]
        for dtype in {g.dtype for g in grads}:
            same = [g for g in grads if g.dtype == dtype]
            flat = torch.cat([g.reshape(-1) for g in same])
            dist.all_reduce(flat)
            flat /= self.size
            for g, part in zip(same, flat.split([g.numel() for g in same]), strict=True):
                g.copy_(part.view_as(g))

    def _comm_device(self) -> torch.device:
        """Where small tensors for a collective live: NCCL takes CUDA tensors only."""
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else "cpu"


class _Gather(torch.autograd.Function):
    """All-gather with a gradient. Every rank computes the same loss of the gathered tensor, and
    the gradients are averaged over ranks afterwards; so each rank's part gets its slice of the
    gradient times the world size, and the average is the one-process gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rank: int, size: int) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.size, ctx.rows = rank, size, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows] * ctx.size, None, None


def close() -> None:
    """Leave the process group, if this process joined one, once every rank has come here (no
    rank tears its connections down while another still finishes a collective). For a run that
    ended well: a failed rank leaves without it, and torchrun stops the others."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
