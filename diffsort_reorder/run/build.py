"""One run's parts, built from its config (:func:`build_run`), and ordering a batch's tokens
(:func:`order_tokens`). The loop that steps them is :mod:`.loop`; validation is
:mod:`.evaluate`."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig, OmegaConf

from ..backbones import create_backbone
from ..checks import check_clip
from ..data import BatchLoader, create_splits, grid_shape
from ..data.loading import batch_order
from ..model import PatchSequenceModel
from ..orders.methods import build_orderer
from .checks import check_config
from .distributed import World
from .runtime import resolve_device, seed_everything, use_amp, use_threads
from .schedules import model_lr, policy_lr, tau_at


@dataclass
class Run:
    """Everything one run builds from its config; the training loop only reads and steps it."""

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
    loaders: dict[str, BatchLoader] = field(default_factory=dict)  # by split: made on use
    test_set: object = None  # read once, after the last epoch (None: the data has none)

    def loading(self) -> tuple[int, bool]:
        """``(num_workers, pin_memory)`` for the loaders of lazy datasets (pinned on CUDA)."""
        return self.cfg.trainer.num_workers, self.device.type == "cuda"

    def loader(self, split: str) -> BatchLoader:
        """The loader of ``split`` ("train", "val" or "test"), kept for the run so that its
        DataLoader workers serve every epoch; :meth:`close` stops them. In training each rank
        reads its part of every batch; in evaluation its contiguous part of the set."""
        if split not in self.loaders:
            t = self.cfg.trainer
            dataset, size, part = {
                "train": (self.train_set, t.batch_size, "batches"),
                "val": (self.val_set, t.eval_batch_size, "set"),
                "test": (self.test_set, t.eval_batch_size, "set"),
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


def build_run(cfg: DictConfig) -> Run:
    t, data_cfg, est = cfg.trainer, cfg.data, cfg.get("estimator")
    world = World.from_env()
    check_config(cfg, world.size)
    use_threads(t.get("threads"))
    device = world.connect(resolve_device(t.device))
    options = OmegaConf.to_container(data_cfg.options, resolve=True) or {}
    train_set, val_set, test_set = create_splits(data_cfg.name, **options)
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
    orderer.batch_share = (world.rank, world.size)  # each rank's share of each global batch
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
    # The model's schedule restarts for the frozen phase (trainer.lr_restart); the orderer's is
    # its own, over the policy phase (trainer.policy), never the model's warm-up and cosine.
    model_factor, policy_factor = model_lr(t, steps_per_epoch), policy_lr(t, steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [model_factor, model_factor] + [policy_factor] * (len(groups) - 2)
    )
    clip_limits = {
        "model": check_clip("trainer.grad_clip", t.grad_clip),
        "orderer": check_clip("estimator.grad_clip", (est or {}).get("grad_clip")),
    }
    return Run(cfg, device, train_set, val_set, grid, model, orderer, optimizer, scheduler,
               steps_per_epoch, clip_limits, world, test_set=test_set)  # fmt: skip


def readout_window_of(cfg: DictConfig, grid: tuple[int, int]) -> int | None:
    """The readout window (``SequenceBackbone.readout_window``) of ``cfg``'s backbone on a
    ``grid`` of patches, without building the data or training: what a report marks on its
    order maps."""
    backbone = create_backbone(
        cfg.backbone.name, size=cfg.backbone.size, num_tokens=grid[0] * grid[1], num_classes=2,
        **(OmegaConf.to_container(cfg.backbone.options, resolve=True) or {}),
    )  # fmt: skip
    return backbone.readout_window()


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


def prepare_run(cfg: DictConfig) -> Run:
    """Seed every generator with ``cfg.seed`` and build the run."""
    seed_everything(cfg.seed)
    return build_run(cfg)
