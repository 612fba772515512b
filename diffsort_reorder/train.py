"""The one training loop every orderer and backbone shares.

``train(cfg)`` runs data -> patchify -> embedding -> orderer -> backbone -> cross-entropy (+ the
orderer's surrogate loss). It knows nothing about which estimator or backbone it runs: every
orderer returns a ``PermutationOutput`` and offers ``surrogate_loss``; every backbone maps tokens to
logits. ``python -m diffsort_reorder.train key=value ...`` composes the config from ``configs/``
and prints the returned metrics as one JSON line, last. Under ``torchrun --nproc-per-node N`` the
run is data parallel over N processes (see :mod:`diffsort_reorder.distributed`); rank 0 alone
writes the checkpoint, TensorBoard and the result.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .backbones import create_backbone
from .checkpoint import load, save_atomic
from .checks import check_clip
from .cli import bad_input, run_command
from .config import RUNTIME_KEYS, compose_config, to_yaml
from .config_checks import check_config
from .data import BatchLoader, create_dataset, grid_shape, key_recall, patchify
from .data.loading import batch_order, shard_bounds
from .distributed import World, close
from .methods import build_orderer
from .model import PatchSequenceModel
from .runlog import RunLogger
from .runtime import (
    code_version,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    show_progress,
    use_amp,
)
from .schedules import constant_lr, lr_factor, phase_at, tau_at

CHECKPOINT = "checkpoint.pt"


def _check_resumable(saved: dict, cfg: dict, path: Path) -> None:
    def strip(c: dict) -> dict:
        return {**c, "trainer": {k: v for k, v in c["trainer"].items() if k not in RUNTIME_KEYS}}

    if strip(saved) != strip(cfg):
        raise ValueError(
            f"{str(path)!r} was written by a run with another config; use a new output_dir or "
            f"trainer.resume=false"
        )


@dataclass
class Run:
    """Everything one run builds from its config; the loop below only reads and steps it."""

    cfg: DictConfig
    device: torch.device
    train_set: object
    val_set: object
    grid: tuple[int, int]
    model: PatchSequenceModel
    orderer: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    steps_per_epoch: int
    clip_limits: dict[str, float]  # max gradient norm per part: model, orderer (inf: no clip)
    world: World = World()  # this process's rank among the run's processes
    loaders: dict[str, BatchLoader] = field(default_factory=dict)  # "train", "val": made on use

    def loading(self) -> tuple[int, bool]:
        """``(num_workers, pin_memory)`` for the loaders of lazy datasets (pinned on CUDA)."""
        return self.cfg.trainer.num_workers, self.device.type == "cuda"

    def loader(self, split: str) -> BatchLoader:
        """The loader of ``split`` ("train" or "val"), kept for the run so that its DataLoader
        workers serve every epoch; :meth:`close` stops them. In training each rank reads its part
        of every batch; in validation its contiguous part of the set."""
        if split not in self.loaders:
            t = self.cfg.trainer
            dataset, size, part = {
                "train": (self.train_set, t.batch_size, "batches"),
                "val": (self.val_set, t.eval_batch_size, "set"),
            }[split]
            self.loaders[split] = BatchLoader(
                dataset, size, *self.loading(), device=self.device, rank=self.world.rank,
                world_size=self.world.size, split=part,
            )  # fmt: skip
        return self.loaders[split]

    def close(self) -> None:
        """Stop the loaders' worker processes (every loader's, even if one fails to stop)."""
        loaders, self.loaders = list(self.loaders.values()), {}
        with contextlib.ExitStack() as stopping:
            for loader in loaders:
                stopping.callback(loader.close)

    def autocast(self):
        """bf16 autocast where ``trainer.amp`` asks for it (auto: CUDA only). Estimators compute
        their permutations in float32 inside it; only ``P @ tokens`` follows bf16."""
        if use_amp(self.cfg.trainer.amp, self.device):
            return torch.autocast(self.device.type, torch.bfloat16)
        return contextlib.nullcontext()

    def clip_gradients(self) -> dict[str, torch.Tensor]:
        """Clip the model's and the orderer's gradients each by its own norm (as REOrder): a
        score-function gradient scales like 1/tau and, clipped jointly, would shrink the model's
        step. Returns both norms before clipping."""
        norms = {}
        for part, limit in self.clip_limits.items():
            params = [p for p in getattr(self, part).parameters() if p.grad is not None]
            norms[part] = (
                torch.nn.utils.clip_grad_norm_(params, limit) if params else torch.zeros(())
            )
        return norms

    def policy_tau(self, step: int) -> float | None:
        """The estimator's temperature at global ``step`` in the policy phase; None without one."""
        est, t = self.cfg.get("estimator"), self.cfg.trainer
        if est is None:
            return None
        policy_step = step - t.curriculum.fixed_epochs * self.steps_per_epoch
        policy_steps = max(1, t.curriculum.policy_epochs * self.steps_per_epoch)
        return tau_at(policy_step, policy_steps, est.tau.schedule, est.tau.max, est.tau.min)


@torch.no_grad()
def evaluate(run: Run) -> dict:
    """Validation loss and accuracy with the hard order; on data with key patches (planted) also
    ``key_recall``, the mean fraction of keys the order puts in the last slots."""
    run.model.eval()
    run.orderer.eval()
    loss_sum, correct, recall, seen = 0.0, 0, 0.0, 0
    keys = getattr(run.val_set, "key_positions", None)  # (K,) or (M, K) per image
    # Each rank evaluates its contiguous part of the set, from image `first` on; sums add up.
    first, _ = shard_bounds(len(run.val_set), run.world.rank, run.world.size)
    for images, labels in run.loader("val").epoch(None):
        images, labels = images.to(run.device), labels.to(run.device)
        with run.autocast():
            out, _ = order_tokens(run, patchify(images, run.cfg.data.patch_size))
            logits = run.model.classify(out.tokens)
        loss_sum += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
        correct += int((logits.argmax(-1) == labels).sum())
        if keys is not None:
            at = first + seen
            batch_keys = keys if keys.dim() == 1 else keys[at : at + len(labels)]
            recall += float(key_recall(out.index, batch_keys).sum())
        seen += len(labels)
    loss_sum, correct, recall, seen = run.world.total([loss_sum, correct, recall, seen])
    metrics = {"val_loss": loss_sum / seen, "val_acc": correct / seen}
    if keys is not None:
        metrics["key_recall"] = recall / seen
    return metrics


@torch.no_grad()
def example_order(run: Run) -> list[int]:
    """The hard order ``(N,)`` the orderer gives the first validation image."""
    run.model.eval()
    run.orderer.eval()
    image = run.val_set[0][0][None].to(run.device)  # (1, C, H, W)
    with run.autocast():
        out, _ = order_tokens(run, patchify(image, run.cfg.data.patch_size))
    return out.index[0].cpu().tolist()


def key_patches(dataset) -> list[int] | None:
    """A dataset's key patches when they are the same for every image (planted), else None."""
    keys = getattr(dataset, "key_positions", None)
    return keys.tolist() if keys is not None and keys.dim() == 1 else None


def build_run(cfg: DictConfig) -> Run:
    t, data_cfg, est = cfg.trainer, cfg.data, cfg.get("estimator")
    world = World.from_env()
    check_config(cfg, world.size)
    device = world.connect(resolve_device(t.device))
    options = OmegaConf.to_container(data_cfg.options, resolve=True) or {}
    train_set, val_set = create_dataset(data_cfg.name, **options)
    c, h, w = train_set.image_shape
    grid = grid_shape(h, w, data_cfg.patch_size)
    num_tokens = grid[0] * grid[1]
    backbone = create_backbone(
        cfg.backbone.name,
        size=cfg.backbone.size,
        num_tokens=num_tokens,
        num_classes=train_set.num_classes,
        **(OmegaConf.to_container(cfg.backbone.options, resolve=True) or {}),
    )
    model = PatchSequenceModel(c * data_cfg.patch_size**2, num_tokens, backbone, cfg.pos_embed)
    model = model.to(device)
    orderer = build_orderer(
        cfg.method, train_set, grid, cfg.get("estimator"), data_cfg.patch_size, cfg.get("prior"),
        token_dim=backbone.dim, order=cfg.get("order"),
    ).to(device)  # fmt: skip
    world.broadcast_from_main([model, orderer])
    if t.compile:
        model.backbone = torch.compile(model.backbone)
    # Weight decay on the model's matrices only; the orderer has its own lr and no decay.
    groups = [
        {"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": t.weight_decay},
        {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0},
    ]
    if list(orderer.parameters()):
        groups.append(
            {"params": list(orderer.parameters()), "weight_decay": 0.0, "lr": cfg.estimator.lr}
        )
    optimizer = torch.optim.AdamW(groups, lr=t.lr)
    steps_per_epoch = len(batch_order(len(train_set), t.batch_size, None, world.rank, world.size))
    total, warmup = t.epochs * steps_per_epoch, t.warmup_epochs * steps_per_epoch
    model_lr = functools.partial(lr_factor, warmup_steps=warmup, total_steps=total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [model_lr, model_lr] + [constant_lr] * (len(groups) - 2)
    )
    clip_limits = {
        "model": check_clip("trainer.grad_clip", t.grad_clip),
        "orderer": check_clip("estimator.grad_clip", (est or {}).get("grad_clip")),
    }
    return Run(cfg, device, train_set, val_set, grid, model, orderer, optimizer, scheduler,
               steps_per_epoch, clip_limits, world)  # fmt: skip


def order_tokens(run: Run, patches: torch.Tensor):
    """Embed and order ``patches``; the orderer first gets what its ``wants`` asks the model for
    (early features or a saliency). Returns the output and the milliseconds of that early pass
    (None when nothing was wanted)."""
    tokens = run.model.embed(patches)
    wants = run.orderer.wants
    if wants.kind == "nothing":
        return run.orderer(tokens), None
    started = time.perf_counter()
    # The pass that scores patches runs in float32 whatever autocast says, as the estimators do:
    # an order is decided by score differences below bf16's resolution.
    with torch.autocast(run.device.type, enabled=False):
        features = run.model.answer(wants, tokens.float())  # (B, N, F)
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    early_ms = 1e3 * (time.perf_counter() - started)
    return run.orderer(tokens, features=features), early_ms


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
    run: Run, state: dict, log: RunLogger, resolved: dict, on_epoch: Callable | None = None
) -> None:
    """Train the epochs ``state`` has not done yet, updating ``state`` after each one;
    ``resolved`` is the run's resolved config, which each checkpoint records."""
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
            log.order(state["step"], run.orderer.order().cpu(), f"{cfg.method} epoch {epoch + 1}")
            if soft is not None:
                log.soft_matrix(state["step"], soft)
        bar.set_postfix(loss=f"{metrics['train_loss']:.3f}", val_acc=f"{metrics['val_acc']:.3f}")
        # 3. Checkpoint atomically: a crash leaves the previous epoch's file whole.
        if t.checkpoint and run.world.is_main:
            modules = {
                n: getattr(run, n).state_dict()
                for n in ("model", "orderer", "optimizer", "scheduler")
            }
            checkpoint = {"config": resolved, **state, **modules, "rng": rng_state(),
                          "tau": run.orderer.tau}  # fmt: skip
            save_atomic(checkpoint, Path(resolved["output_dir"]) / CHECKPOINT)
            log.flush()
        # 4. Tell the caller (a study's pruner may stop the run here).
        if on_epoch is not None:
            on_epoch(epoch + 1, metrics)


def prepare_run(cfg: DictConfig) -> Run:
    """Seed every generator with ``cfg.seed`` and build the run."""
    seed_everything(cfg.seed)
    return build_run(cfg)


def train(
    cfg: DictConfig, on_epoch: Callable[[int, dict], None] | None = None, run: Run | None = None
) -> dict:
    """Train one run as ``cfg`` says; returns its metrics (see the module docstring).

    ``on_epoch(epoch, metrics)`` is called after each epoch is validated and checkpointed (a study
    reports ``metrics["val_acc"]`` to its pruner there); an exception it raises ends the run.
    ``run`` is what :func:`prepare_run` built from ``cfg``, when the caller built it already."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    t = cfg.trainer
    out_dir = Path(cfg.output_dir)
    run = prepare_run(cfg) if run is None else run

    # 1. Resume from the last finished epoch, if a checkpoint of this config exists.
    ckpt_path = out_dir / CHECKPOINT
    state = {"epoch": 0, "step": 0, "best_val_acc": 0.0, "history": [], "train_seconds": 0.0}
    if t.resume and ckpt_path.exists():
        saved = load(ckpt_path)
        _check_resumable(saved["config"], resolved, ckpt_path)
        for name in ("model", "orderer", "optimizer", "scheduler"):
            getattr(run, name).load_state_dict(saved[name])
        set_rng_state(saved["rng"])
        if run.world.size > 1 and run.device.type == "cuda" and "cuda" in saved["rng"]:
            torch.cuda.set_rng_state(saved["rng"]["cuda"][0], run.device)  # rank 0's GPU's
        run.orderer.tau = saved["tau"]  # the temperature the last finished epoch ended at
        state = {k: saved[k] for k in state}
    # Every rank has read the checkpoint before rank 0 may write the next one (a barrier).
    run.world.check_same("the epoch to resume from", state["epoch"])
    main = run.world.is_main
    if main:  # recorded once the run is known to be this config's (a refused resume leaves them)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(to_yaml(cfg))
        (out_dir / "run.json").write_text(json.dumps({"code_version": code_version()}) + "\n")

    log = RunLogger((t.get("log_dir") or out_dir / "tb") if main else None, run.grid)
    try:
        fit(run, state, log, resolved, on_epoch)
    except BaseException:
        log.close()  # a pruned or interrupted run leaves its events on disk
        raise
    finally:
        run.close()  # the DataLoader workers end with the run, however it ends

    history = state["history"]
    last = history[-1] if history else {}
    result = {
        "val_acc": last.get("val_acc"),
        "best_val_acc": state["best_val_acc"],
        "val_loss": last.get("val_loss"),
        "train_seconds": round(state["train_seconds"], 2),
        "key_recall": last.get("key_recall"),
        # Key patches (planted data), to mark them in drawings of the order.
        "key_patches": key_patches(run.val_set),
        "steps": state["step"],
        "epochs": len(history),
        "finished": len(history) == t.epochs,
        "method": cfg.method,
        "backbone": cfg.backbone.name,
        "data": cfg.data.name,
        "seed": cfg.seed,
        "world_size": run.world.size,
        "grid": list(run.grid),
        "order": run.orderer.order().cpu().tolist() if run.orderer.is_global else None,
        # A per-image orderer's order for the first validation image (for drawings).
        "example_order": None if run.orderer.is_global else example_order(run),
        "output_dir": str(out_dir),
    }
    if result["finished"]:
        log.hparams(resolved, {"hparam/val_acc": result["val_acc"],
                               "hparam/best_val_acc": result["best_val_acc"]})  # fmt: skip
    log.close()
    if main:
        (out_dir / "result.json").write_text(json.dumps(result) + "\n")
    return result


def main(argv: list[str] | None = None) -> dict | None:
    """``diffsort-train [key=value ...]``: train one run, print its result as one JSON line."""
    summary = "Train one run (data, backbone, method, trainer) and print its result as JSON."
    cfg = run_command("diffsort-train", summary, "config", compose_config, argv)
    if cfg is None:
        return None
    with bad_input():  # the config's values (before seeding reads seed=), then what it names
        world = World.from_env()
        check_config(cfg, world.size)
        run = prepare_run(cfg)
    result = train(cfg, run=run)
    close()
    if world.is_main:
        print(json.dumps(result))
    return result


def console() -> None:
    """The ``diffsort-train`` console script (``main``, returning no value)."""
    main()


if __name__ == "__main__":
    main()
