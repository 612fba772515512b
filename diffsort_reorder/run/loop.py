"""The one training loop every orderer and backbone shares.

``train(cfg)`` runs data -> patchify -> embedding -> orderer -> backbone -> cross-entropy (+ the
orderer's surrogate loss). It knows nothing about which estimator or backbone it runs: every
orderer returns a ``PermutationOutput`` and offers ``surrogate_loss``; every backbone maps tokens to
logits. It returns a :class:`~.result.RunResult` and writes the run's folder through
:class:`~.rundir.RunDir`. ``python -m diffsort_reorder.train key=value ...`` (:mod:`.cli`)
composes the config from ``configs/`` and prints the result as one JSON line, last. Under
``torchrun --nproc-per-node N`` the run is data parallel over N processes (see
:mod:`.distributed`); rank 0 alone writes the checkpoint, TensorBoard and the result.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ..data import patchify
from .build import Run, order_tokens, prepare_run
from .evaluate import evaluate, example_order, readout_window
from .log import RunLogger
from .result import RunResult
from .rundir import RunDir
from .runtime import code_version, progress_lines, rng_state, set_rng_state, show_progress
from .schedules import lr_mass, phase_at

MODULES = ("model", "orderer", "optimizer", "scheduler")  # what a checkpoint holds of a Run


def train_step(run: Run, images, labels, epoch: int = 0, step: int = 0):
    """One optimizer step on a batch; returns the orderer's output, the logits and the
    per-sample losses."""
    # 1. Embed, order (with early features if the orderer scores them), classify; the orderer's
    #    surrogate term joins the task loss.
    with run.autocast():
        out, early_ms = order_tokens(run, patchify(images, run.cfg.data.patch_size))
        logits = run.model.classify(out.tokens)
    if early_ms is not None:
        out.aux["early_pass_ms"] = early_ms
    #    The surrogate term sees every rank's samples, so a REINFORCE baseline follows the rewards
    #    of the global batch, as in one process.
    per_sample = F.cross_entropy(logits.float(), labels, reduction="none")  # (B,)
    loss = per_sample.mean() + run.orderer.surrogate_loss(*run.world.global_batch(out, per_sample))
    judged = run.world.mean(loss.detach())  # the same on every rank: all stop or none
    if not torch.isfinite(judged):
        raise FloatingPointError(f"non-finite loss {float(judged)} at epoch {epoch}, step {step}")
    # 2. Backward, gradients averaged over ranks (so clipped as one process clips them); a
    #    non-finite gradient stops the run before it reaches the weights.
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.world.average_gradients([run.model, run.orderer])
    norms = run.clip_gradients()
    for part, norm in norms.items():
        if not torch.isfinite(norm):
            raise FloatingPointError(
                f"non-finite {part} gradient norm at epoch {epoch}, step {step}"
            )
        out.aux[f"grad_norm_{part}"] = norm.detach()
    # 3. Step the weights and the learning rate.
    run.optimizer.step()
    run.scheduler.step()
    return out, logits, per_sample.detach()


def train_epoch(run: Run, epoch: int, step: int, log: RunLogger) -> tuple[dict, int, object]:
    """One epoch; returns its train metrics, the new global step and the last soft matrix."""
    t = run.cfg.trainer
    phase = phase_at(epoch, t.curriculum.fixed_epochs, t.curriculum.policy_epochs)
    run.model.train()
    run.orderer.train(phase == "policy")  # fixed and frozen phases use the hard order
    gen = torch.Generator().manual_seed(run.cfg.seed * 100_003 + epoch)  # resumable data order
    loss_sum, correct, seen, soft = 0.0, 0, 0, None
    for images, labels in run.loader("train").epoch(gen):
        images, labels = images.to(run.device), labels.to(run.device)
        tau = run.policy_tau(step) if phase == "policy" else None
        if tau is not None:
            run.orderer.tau = tau
        out, logits, per_sample = train_step(run, images, labels, epoch, step)
        step += 1
        loss_sum += float(per_sample.sum())
        correct += int((logits.argmax(-1) == labels).sum())
        seen += labels.numel()
        soft = out.soft[0] if out.soft is not None else soft
        if step % t.log_every == 0:
            aux = {f"aux/{k}": v for k, v in out.aux.items() if torch.as_tensor(v).numel() == 1}
            lr = run.scheduler.get_last_lr()[0]
            loss = run.world.mean(per_sample.mean())
            log.scalars(step, {"train/loss": loss, "tau": run.orderer.tau, "lr": lr, **aux})
    loss_sum, correct, seen = run.world.total([loss_sum, correct, seen])
    return {"phase": phase, "train_loss": loss_sum / seen, "train_acc": correct / seen}, step, soft


def fit(
    run: Run,
    state: dict,
    log: RunLogger,
    resolved: dict,
    folder: RunDir,
    on_epoch: Callable | None = None,
) -> None:
    """Train the epochs ``state`` has not done yet, updating ``state`` after each one and
    checkpointing into ``folder``; ``resolved`` is the run's resolved config, which each
    checkpoint records."""
    cfg, t = run.cfg, run.cfg.trainer
    epochs = range(state["epoch"], t.epochs)
    bar = tqdm(epochs, desc=f"{cfg.method}/{cfg.backbone.name}", initial=state["epoch"],
               total=t.epochs, disable=not show_progress(t.progress))  # fmt: skip
    for epoch in bar:
        if t.stop_after_epochs is not None and epoch >= t.stop_after_epochs:
            break  # as if interrupted: the checkpoint holds every finished epoch
        # 1. Train one epoch.
        started = time.perf_counter()
        metrics, state["step"], soft = train_epoch(run, epoch, state["step"], log)
        state["train_seconds"] += time.perf_counter() - started
        # 2. Validate and log.
        metrics = {"epoch": epoch + 1, **metrics, **evaluate(run)}
        state["best_val_acc"] = max(state["best_val_acc"], metrics["val_acc"])
        state["history"].append(metrics)
        state["epoch"] = epoch + 1
        scalars = {
            f"{k.replace('_', '/', 1)}": metrics[k]
            for k in ("train_acc", "val_loss", "val_acc", "key_recall")
            if k in metrics
        }
        log.scalars(state["step"], scalars)
        if run.orderer.is_global and (epoch % t.image_every == 0 or epoch + 1 == t.epochs):
            log.order(
                state["step"],
                run.orderer.order().cpu(),
                f"{cfg.method} epoch {epoch + 1}",
                run.val_set.shared_keys(),
                readout_window(run),
            )  # the report's map
            if soft is not None:
                log.soft_matrix(state["step"], soft)
        show_epoch(bar, run, metrics, time.perf_counter() - started)
        # 3. Checkpoint atomically: a crash leaves the previous epoch's file whole.
        if t.checkpoint and run.world.is_main:
            modules = {n: getattr(run, n).state_dict() for n in MODULES}
            folder.save_checkpoint({"config": resolved, **state, **modules, "rng": rng_state(),
                                    "tau": run.orderer.tau})  # fmt: skip
            log.flush()
        # 4. Tell the caller (a study's pruner may stop the run here).
        if on_epoch is not None:
            on_epoch(epoch + 1, metrics)


def show_epoch(bar, run: Run, metrics: dict, seconds: float) -> None:
    """An epoch's numbers on the bar; where no bar shows (``progress_lines``: no terminal, as in
    a cluster's log file), one line on stderr instead, so that the log shows the run moving."""
    loss, acc = f"{metrics['train_loss']:.3f}", f"{metrics['val_acc']:.3f}"
    bar.set_postfix(loss=loss, val_acc=acc)
    cfg = run.cfg
    if progress_lines(cfg.trainer.progress) and run.world.is_main:
        where = f"{cfg.method}/{cfg.backbone.name} epoch {metrics['epoch']}/{cfg.trainer.epochs}"
        line = f"{where}: train_loss {loss}, val_acc {acc} ({seconds:.1f} s)"
        print(line, file=sys.stderr, flush=True)


def train(
    cfg: DictConfig, on_epoch: Callable[[int, dict], None] | None = None, run: Run | None = None
) -> RunResult:
    """Train one run as ``cfg`` says; returns its :class:`RunResult`.

    ``on_epoch(epoch, metrics)`` is called after each epoch is validated and checkpointed (a study
    reports ``metrics["val_acc"]`` to its pruner there); an exception it raises ends the run.
    ``run`` is what :func:`prepare_run` built from ``cfg``, when the caller built it already."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    t, folder = cfg.trainer, RunDir(cfg.output_dir)
    run = prepare_run(cfg) if run is None else run
    # 1. Resume from the last finished epoch, if a checkpoint of this config exists.
    state = {"epoch": 0, "step": 0, "best_val_acc": 0.0, "history": [], "train_seconds": 0.0}
    saved = folder.load_checkpoint(resolved) if t.resume and folder.has_checkpoint() else None
    if saved is not None:  # None: no checkpoint, or none that reads (the run starts again)
        state = resume(run, saved, state)
    # Every rank has read the checkpoint before rank 0 may write the next one (a barrier).
    run.world.check_same("the epoch to resume from", state["epoch"])
    main = run.world.is_main
    version = code_version()  # once per run: a git call
    if main:  # recorded once the run is known to be this config's (a refused resume leaves them)
        folder.write_config(cfg, version, torch.get_num_threads())
    # 2. Train the epochs left.
    log = RunLogger((t.get("log_dir") or folder.path / "tb") if main else None, run.grid)
    try:
        fit(run, state, log, resolved, folder, on_epoch)
        # The test split, once, with the final order: nothing that selects reads it.
        done = len(state["history"]) == t.epochs and run.test_set is not None
        test = evaluate(run, "test") if done else {}
    except BaseException:
        log.close()  # a pruned or interrupted run leaves its events on disk
        raise
    finally:
        run.close()  # the DataLoader workers end with the run, however it ends
    # 3. Record the result.
    result = run_result(run, state, version, test)
    if result.finished:
        finals = {"val_acc": result.val_acc, "best_val_acc": result.best_val_acc,
                  "test_acc": result.test_acc}  # fmt: skip
        log.hparams(resolved, {f"hparam/{k}": v for k, v in finals.items() if v is not None})
    log.close()
    if main:
        folder.write_result(result)
    return result


def resume(run: Run, saved: dict, state: dict) -> dict:
    """Load the checkpoint ``saved`` into ``run``; returns its ``state`` (the keys of ``state``)."""
    for name in MODULES:
        getattr(run, name).load_state_dict(saved[name])
    set_rng_state(saved["rng"])
    if run.world.size > 1 and run.device.type == "cuda" and "cuda" in saved["rng"]:
        torch.cuda.set_rng_state(saved["rng"]["cuda"][0], run.device)  # rank 0's GPU's
    run.orderer.tau = saved["tau"]  # the temperature the last finished epoch ended at
    return {k: saved[k] for k in state}


def run_result(run: Run, state: dict, version: str, test: dict | None = None) -> RunResult:
    """What ``run`` hands its caller once its epochs (``state``) are done; ``version`` is the
    code's, ``test`` the test split's metrics (:func:`evaluate`)."""
    cfg, history = run.cfg, state["history"]
    last = history[-1] if history else {}
    glob = run.orderer.is_global
    return RunResult(
        seed=cfg.seed,
        method=cfg.method,
        backbone=cfg.backbone.name,
        data=cfg.data.name,
        val_acc=last.get("val_acc"),
        best_val_acc=state["best_val_acc"],
        val_loss=last.get("val_loss"),
        key_recall=last.get("key_recall"),
        test_acc=(test or {}).get("test_acc"),
        test_loss=(test or {}).get("test_loss"),
        lr_mass={k: round(v, 4) for k, v in lr_mass(cfg.trainer, run.steps_per_epoch).items()},
        marginal_error=run.orderer.marginal_error(),
        train_seconds=round(state["train_seconds"], 2),
        steps=state["step"],
        epochs=len(history),
        finished=len(history) == cfg.trainer.epochs,
        world_size=run.world.size,
        grid=list(run.grid),
        key_patches=run.val_set.shared_keys(),
        order=run.orderer.order().cpu().tolist() if glob else None,
        example_order=None if glob else example_order(run),
        output_dir=str(Path(cfg.output_dir)),
        code_version=version,
    )
