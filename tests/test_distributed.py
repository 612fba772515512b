"""One run on several processes: real torch.distributed (gloo, 2 CPU processes), no mocks.

The runs use REINFORCE with a leave-one-out baseline (``plackett_luce_rloo``): its permutations
are drawn once per batch (they must be the same on every rank) and its surrogate term needs the
rewards of the whole global batch, so it exercises every part of the scheme.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ddp_worker import evaluation, surrogate_gradients
from tiny_runs import TINY, tiny

from diffsort_reorder.config import compose_config
from diffsort_reorder.data.loading import batch_order, eval_order
from diffsort_reorder.files import load
from diffsort_reorder.run import cli as train_cli
from diffsort_reorder.run import loop as train_module
from diffsort_reorder.run.build import prepare_run
from diffsort_reorder.run.checks import check_config
from diffsort_reorder.run.distributed import World
from diffsort_reorder.run.evaluate import evaluate
from diffsort_reorder.run.result import RunResult
from estimators import create_estimator, list_estimators
from estimators.registry import ESTIMATORS

# A 2-process run against one process on the same global batches, float32: the global mean is a
# mean of two half-batch means and the gradients are summed across processes, so results differ
# in rounding. Measured on this run: val_loss 6.2e-8 relative apart, train_loss 1.4e-8, the
# estimator's logits 2.4e-7 (absolute), val_acc, train_acc and the order equal. The bounds leave
# 40x room or more. The weights are not compared: AdamW divides by the gradient's size, so a
# component that is zero but for rounding takes a step of lr either way (measured 8.4e-5 apart).
METRIC_RTOL = 1e-5
LOGITS_ATOL = 1e-5
# tau from 0.1, not the config's 0.001: there PyTorch's float32 logcumsumexp backward leaves
# rounding noise of ~1e-2 in the Plackett-Luce log-prob gradient (float64: 1e-10), and AdamW
# turns that noise into lr-sized steps that a change of summation order redraws.
RUN = [*TINY, "method=plackett_luce_rloo", "estimator.tau.min=0.1", "trainer.epochs=3",
       "trainer.curriculum.policy_epochs=3"]  # fmt: skip
GRAD_RTOL = 1e-12  # float64 gradients: one process against two


def torchrun(output_dir: Path, *overrides: str, run=RUN) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 -m diffsort_reorder.train`` on the tiny run."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "diffsort_reorder.train", *run,
               f"output_dir={output_dir}", *overrides]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The uninterrupted 2-process run: its directory and the JSON lines it printed."""
    out = tmp_path_factory.mktemp("two")
    done = torchrun(out)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return out, lines


def test_a_two_process_run_prints_one_result_with_its_world_size(two_processes):
    out, lines = two_processes
    assert len(lines) == 1  # rank 0 alone prints, writes the result and TensorBoard
    result = RunResult.from_json(lines[0])
    assert result.finished and result.world_size == 2 and result.steps == 12
    assert json.loads((out / "result.json").read_text()) == lines[0]
    writers = {p.name.split(".")[-2] for p in (out / "tb").glob("events.out.tfevents.*")}
    assert len(writers) == 1  # one process id: rank 0's


def test_two_processes_compute_what_one_process_computes(two_processes, tmp_path):
    out, (printed,) = two_processes
    two = RunResult.from_json(printed)
    one = train_module.train(compose_config([*RUN, f"output_dir={tmp_path}"]))
    assert one.world_size == 1 and one.steps == two.steps
    assert one.order == two.order and one.val_acc == two.val_acc
    assert two.val_loss == pytest.approx(one.val_loss, rel=METRIC_RTOL)
    a, b = load(tmp_path / "checkpoint.pt"), load(out / "checkpoint.pt")
    for epoch_one, epoch_two in zip(a["history"], b["history"], strict=True):
        for key in ("train_loss", "val_loss"):
            assert epoch_two[key] == pytest.approx(epoch_one[key], rel=METRIC_RTOL), key
        assert epoch_two["train_acc"] == epoch_one["train_acc"]  # over all 64 images, not 32
    torch.testing.assert_close(
        b["orderer"]["logits"], a["orderer"]["logits"], atol=LOGITS_ATOL, rtol=0
    )


def test_draws_per_image_on_two_processes_are_one_process_draws(tmp_path):
    """Plackett-Luce with a permutation per image: each rank samples its part of the global
    batch's permutations, so the run is one process's (on the CPU, which draws in sequence)."""
    run = [*RUN[:-4], "method=plackett_luce", "estimator.options.samples=image", *RUN[-3:]]
    assert "method=plackett_luce_rloo" not in run and "estimator.tau.min=0.1" in run
    done = torchrun(tmp_path / "two", run=run)
    two = RunResult.from_json(json.loads(done.stdout.strip().splitlines()[-1]))
    one = train_module.train(compose_config([*run, f"output_dir={tmp_path / 'one'}"]))
    assert two.world_size == 2 and one.steps == two.steps
    assert one.order == two.order and one.val_acc == two.val_acc
    assert two.val_loss == pytest.approx(one.val_loss, rel=METRIC_RTOL)
    a, b = load(tmp_path / "one" / "checkpoint.pt"), load(tmp_path / "two" / "checkpoint.pt")
    torch.testing.assert_close(
        b["orderer"]["logits"], a["orderer"]["logits"], atol=LOGITS_ATOL, rtol=0
    )


def test_a_stopped_two_process_run_resumes_to_the_uninterrupted_result(two_processes, tmp_path):
    out, (full,) = two_processes
    torchrun(tmp_path, "trainer.stop_after_epochs=1")
    assert load(tmp_path / "checkpoint.pt")["epoch"] == 1
    resumed = RunResult.from_json(json.loads(torchrun(tmp_path).stdout.strip().splitlines()[-1]))
    assert resumed.finished and resumed.world_size == 2
    for key in ("val_acc", "val_loss", "best_val_acc", "steps", "order"):
        assert getattr(resumed, key) == full[key], key
    a, b = load(out / "checkpoint.pt"), load(tmp_path / "checkpoint.pt")
    for part in ("model", "orderer"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name}"


def test_a_batch_size_the_world_size_does_not_divide_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; refused before any group forms
    with pytest.raises(SystemExit) as stop:
        train_cli.main([*TINY, f"output_dir={tmp_path}", "trainer.batch_size=15"])
    assert stop.value.code == 2 and not dist.is_initialized()
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: 'trainer.batch_size' should be a multiple of the world size (2 processes), so "
        "that each takes an equal part of every batch, but got 15; e.g. 14 or 16"
    )
    # Four permutations per batch need 4 | images per process; a world of one needs nothing.
    cfg = tiny(tmp_path, "method=plackett_luce_rloo", "trainer.batch_size=12")
    with pytest.raises(ValueError, match=r"\(12 / 2 = 6 images per process\) should be a multi"):
        check_config(cfg, world_size=2)
    check_config(cfg, world_size=1)


@pytest.mark.parametrize(
    "env", [{"WORLD_SIZE": "2", "RANK": "2"}, {"WORLD_SIZE": "two"}, {"WORLD_SIZE": "0"}]
)
def test_bad_torchrun_variables_are_refused(env):
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        World.from_env(env)
    assert World.from_env({}) == World(0, 1, 0)


def test_each_rank_takes_its_equal_part_of_every_global_batch():
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    whole = batch_order(22, 8, gen())  # 8, 8, 6
    parts = [batch_order(22, 8, gen(), rank, 4) for rank in range(4)]
    # The full batches are cut into four parts of 2; the last batch of 6 keeps 4 (1 each).
    for b, batch in enumerate(whole):
        kept = len(batch) - len(batch) % 4
        assert torch.equal(torch.cat([p[b] for p in parts]), batch[:kept])
    assert [len(p[-1]) for p in parts] == [1, 1, 1, 1]
    assert [len(b) for b in batch_order(18, 8, None, 1, 4)] == [2, 2]  # 2 left over: no batch
    alone = batch_order(22, 8, gen(), 0, 1)  # a world of one: the batches as they were
    assert all(torch.equal(a, b) for a, b in zip(alone, whole, strict=True))
    with pytest.raises(ValueError, match=r"0 <= rank < world_size dividing batch_size \(8\)"):
        batch_order(22, 8, None, 0, 3)


def test_the_averaged_gradient_is_the_one_process_gradient_in_float64(tmp_path):
    """Surrogate term (gathered rewards and log-probabilities) plus the task loss's mean, both
    through a shared head: the gradients averaged over 2 ranks are one process's gradients, and
    the EMA baseline moves the same on both ranks."""
    mp.spawn(surrogate_gradients, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for baseline in ("ema", "rloo"):
        for rank in ranks:
            got = rank[baseline]
            for one, two in zip(got["one"], got["two"], strict=True):
                assert one.abs().max() > 1e-3  # a gradient worth comparing
                torch.testing.assert_close(two, one, rtol=GRAD_RTOL, atol=0)
        first, second = ranks[0][baseline], ranks[1][baseline]
        assert all(torch.equal(a, b) for a, b in zip(first["two"], second["two"], strict=True))
        assert torch.equal(first["moved"][1], second["moved"][1])
        torch.testing.assert_close(first["moved"][1], first["moved"][0], rtol=GRAD_RTOL, atol=0)
        assert first["moved"][0] != -0.7  # the step moved it


def test_each_rank_validates_its_part_and_the_sums_are_one_process_metrics(tmp_path):
    """Per-image key positions (planted_moving) and 33 images, which two ranks split 16 + 17:
    every image is validated once, and each rank reports the whole set's metrics."""
    overrides = [*TINY, "data=planted_moving", "data.options.num_val=33",
                 "trainer.eval_batch_size=8", f"output_dir={tmp_path}"]  # fmt: skip
    mp.spawn(evaluation, args=(str(tmp_path / "store"), str(tmp_path), overrides), nprocs=2)
    ranks = [torch.load(tmp_path / f"eval{r}.pt") for r in range(2)]
    assert [r["images"] for r in ranks] == [16, 17]
    one = evaluate(prepare_run(compose_config(overrides)))
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    got = ranks[0]["metrics"]
    assert got.keys() == one.keys() == {"val_loss", "val_acc", "key_recall"}
    assert got["val_acc"] == one["val_acc"]
    assert got["key_recall"] == pytest.approx(one["key_recall"])
    assert got["val_loss"] == pytest.approx(one["val_loss"], rel=METRIC_RTOL)
    parts = [eval_order(33, 8, rank, 2) for rank in range(2)]
    assert [[len(b) for b in part] for part in parts] == [[8, 8], [8, 8, 1]]
    assert torch.equal(torch.cat([torch.cat(part) for part in parts]), torch.arange(33))
    assert eval_order(2, 8, 0, 4) == [] and [len(b) for b in eval_order(2, 8, 1, 4)] == [1]
    with pytest.raises(ValueError, match=r"0 <= rank < world_size but got rank=2, world_size=2"):
        eval_order(4, 2, 2, 2)


@pytest.mark.parametrize(
    "name, options",
    [("plackett_luce", {"samples": "image"}), ("gumbel_sinkhorn", {"samples": "image"}),
     ("saliency", {"dim": 6, "relaxation": "plackett_luce", "feature_blocks": 0})],
)  # fmt: skip
def test_per_image_draws_are_each_ranks_part_of_one_process_draws(name, options):
    """Draws per image under DDP: rank r's images get rank r's part of the whole batch's draws
    (before, every rank drew what rank 0 drew), and every rank's random state moves alike."""
    tokens = torch.randn(8, 5, 6, generator=torch.Generator().manual_seed(0))  # (B, N, D)

    def forward(part, rows):
        torch.manual_seed(3)
        est = create_estimator(name, num_tokens=5, tau=0.5, **options)
        est.batch_share = part
        out = est(tokens[rows])
        return out, torch.get_rng_state()

    whole, state = forward((0, 1), slice(None))
    halves = [forward((rank, 2), slice(4 * rank, 4 * rank + 4)) for rank in (0, 1)]
    assert torch.equal(torch.cat([out.index for out, _ in halves]), whole.index)
    assert not torch.equal(halves[0][0].index, halves[1][0].index)  # the parts differ
    if whole.soft is not None:  # Gumbel-Sinkhorn: each image's noise, each image's Sinkhorn
        soft = torch.cat([out.soft for out, _ in halves])
        torch.testing.assert_close(soft, whole.soft, rtol=0, atol=1e-6)
    assert all(torch.equal(rank_state, state) for _, rank_state in halves)


@pytest.mark.parametrize("name", list_estimators())
def test_every_estimator_on_shares_of_a_batch_gives_the_whole_batch_output(name):
    """Whatever an estimator draws (per batch, per image, nothing), the shares of a batch that
    set ``batch_share`` get the whole batch's permutations and leave the random state alike."""
    tokens = torch.randn(8, 5, 6, generator=torch.Generator().manual_seed(0))  # (B, N, D)
    extra = {k: 6 for k in ESTIMATORS[name].extra_required}  # saliency: dim

    def forward(share, rows):
        torch.manual_seed(3)
        est = create_estimator(name, num_tokens=5, tau=0.5, **extra)
        est.batch_share = share
        return est(tokens[rows]).index, torch.get_rng_state()

    whole, state = forward((0, 1), slice(None))
    halves = [forward((i, 2), slice(4 * i, 4 * i + 4)) for i in (0, 1)]
    assert torch.equal(torch.cat([index for index, _ in halves]), whole)
    assert all(torch.equal(share_state, state) for _, share_state in halves)
