"""What each of two spawned processes runs for the float64 gradient test of test_distributed
(a module of its own: a spawned process imports it, and little else, to start fast)."""

import torch
import torch.distributed as dist
import torch.nn.functional as F

from diffsort_reorder.run.distributed import World, close
from estimators import create_estimator
from estimators.plackett_luce import _log_prob


class Problem:
    """A float64 batch of 8 through a linear head plus a Plackett-Luce policy drawing 2
    permutations per batch: the task loss depends on the policy's log-probabilities too, so
    both gradient paths (gathered per-sample losses, gathered log-probabilities) count."""

    def __init__(self, baseline: str) -> None:
        torch.manual_seed(0)
        self.images = torch.randn(8, 5, dtype=torch.float64)
        self.labels = torch.arange(8) % 3
        self.head = torch.nn.Linear(5, 3).double()
        self.est = create_estimator("plackett_luce", num_tokens=6, samples="batch",
                                    num_samples=2, baseline=baseline, tau=0.5).double()  # fmt: skip
        perms = torch.stack([torch.randperm(6) for _ in range(2)])  # (2, 6)
        self.index = perms[torch.arange(8) % 2]  # (8, 6): image b uses permutation b % 2

    def step(self, world: World, rows: slice) -> list[torch.Tensor]:
        """One step's gradients (averaged over ``world``) on the images ``rows``."""
        est, head = self.est, self.head
        est.zero_grad(), head.zero_grad()
        est.baseline.fill_(-0.7), est.baseline_ready.fill_(True)
        log_prob = _log_prob(est.logits, self.index[rows], est.tau)  # (b,)
        logits = head(self.images[rows]) + log_prob[:, None]  # (b, 3)
        per_sample = F.cross_entropy(logits, self.labels[rows], reduction="none")  # (b,)
        tokens = torch.zeros(len(log_prob), 6, 1, dtype=torch.float64)
        out = est.indexed_output(tokens, self.index[rows], log_prob=log_prob)
        loss = per_sample.mean() + est.surrogate_loss(*world.global_batch(out, per_sample))
        loss.backward()
        world.average_gradients([est, head])
        return [p.grad.clone() for p in (est.logits, head.weight, head.bias)]


def surrogate_gradients(rank: int, store: str, out_dir: str) -> None:
    """Rank ``rank`` of 2: one process's gradients on the whole batch, then this rank's
    averaged gradients on its half; saved with the EMA baseline each step left."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    world = World(rank, 2, 0)
    world.connect(torch.device("cpu"))
    results = {}
    for baseline in ("ema", "rloo"):
        problem = Problem(baseline)
        one = problem.step(World(), slice(None))
        moved_one = problem.est.baseline.clone()
        two = problem.step(world, slice(4 * rank, 4 * rank + 4))
        results[baseline] = {"one": one, "two": two, "moved": (moved_one, problem.est.baseline)}
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    close()


def evaluation(rank: int, store: str, out_dir: str, overrides: list[str]) -> None:
    """Rank ``rank`` of 2 validates a freshly built run (as torchrun would start it), counting
    the images its validation loader gives it; saves the metrics and the count."""
    import os

    from diffsort_reorder.config import compose_config
    from diffsort_reorder.run.build import prepare_run
    from diffsort_reorder.run.evaluate import evaluate

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    run = prepare_run(compose_config(overrides))
    loader, counted = run.loader("val"), []
    read = loader.epoch

    def counting(generator):
        for images, labels in read(generator):
            counted.append(len(labels))
            yield images, labels

    loader.epoch = counting
    metrics = evaluate(run)
    run.close()
    torch.save({"metrics": metrics, "images": sum(counted)}, f"{out_dir}/eval{rank}.pt")
    close()
