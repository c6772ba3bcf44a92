"""The method's training loop (Chan, Durand & Isola 2022, plus the segmentation loss): `linedraw train CONFIG`.

    linedraw train smoke [key.sub=value ...]                  # one process, CPU or one GPU
    accelerate launch -m linedraw train contour-offline       # every GPU of the machine

Config -> data -> teachers -> nets (only what the enabled losses need) -> optimizers -> steps. A run folder holds
`config.yaml`, `metrics.jsonl`, tensorboard logs, `samples/` and `checkpoints/step_XXXXXXXX/` (the resumable state,
see `linedraw.training.state`, plus `G_A.safetensors` + `G_A.json`, which `linedraw convert --checkpoint RUN_DIR`
loads). Running the same command again resumes from `checkpoints/latest`.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from linedraw.config import ConfigError, TrainConfig, save_config, to_dict
from linedraw.errors import LinedrawError
from linedraw.losses.cycle import cycle_loss
from linedraw.losses.gan import lsgan_discriminator_loss, lsgan_generator_loss
from linedraw.models import create_model
from linedraw.models.augment import diff_augment
from linedraw.models.pool import ImagePool
from linedraw.training.checkpoints import RunCheckpoints
from linedraw.training.schedules import linear_decay, resync, schedule
from linedraw.training.signals import StopOnSignal, ignore_stop_signals
from linedraw.training.state import RunState

log = logging.getLogger("linedraw.train")

NET_NAMES = ("G_A", "G_B", "D_A", "D_B", "head", "unet")


def init_weights(module: nn.Module) -> None:
    """CycleGAN's init: conv weights N(0, 0.02), norm scales N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.InstanceNorm2d, nn.BatchNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


@dataclass
class Teachers:
    """Frozen helpers of the enabled losses (None where a loss is off)."""

    semantic: nn.Module | None = None
    features: nn.Module | None = None
    estimator: Callable | None = None


class DiffAugment:
    """`model.diffaugment` in front of every discriminator call, drawing from its own seeded generator (saved with
    the run state, so a resumed run augments as an uninterrupted one); the empty policy passes images through."""

    def __init__(self, policy: str, device: torch.device, seed: int) -> None:
        self.policy, self.generator = policy, torch.Generator(device=device).manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return diff_augment(images, self.policy, self.generator)

    def state_dict(self) -> dict[str, Any]:
        """The policy and the generator's state."""
        return {"policy": self.policy, "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the generator's state (the policy comes from this run's config)."""
        self.generator.set_state(state["rng"])


@dataclass
class Run:
    """Everything the loop touches: the accelerator, the nets, their optimizers and schedules, the loss terms."""

    cfg: TrainConfig
    accelerator: Any
    nets: dict[str, nn.Module]
    optimizers: dict[str, tuple[torch.optim.Optimizer, list[nn.Module]]]
    schedulers: dict[str, torch.optim.lr_scheduler.LambdaLR]
    losses: dict[str, Callable[[torch.Tensor, dict], torch.Tensor]]
    estimator: Callable | None
    pools: dict[str, ImagePool]
    augment: DiffAugment
    state: RunState = field(default_factory=RunState)


@contextlib.contextmanager
def _names_key(key: str, value: str, *related: str) -> Iterator[None]:
    """Turn a library's refusal to build what `key` names (an unknown model, a layer it lacks) into a
    ConfigError naming the key, instead of a traceback."""
    try:
        yield
    except LinedrawError:  # already says what is wrong (missing weights, say)
        raise
    except (KeyError, IndexError, RuntimeError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        keys = " / ".join((key, *related))
        raise ConfigError(f"{keys}: cannot build {value!r}: {str(message)[:300]}", key) from None


def build_models(cfg: TrainConfig, device: torch.device) -> tuple[dict[str, nn.Module], Teachers]:
    """The trainable nets and frozen teachers the enabled losses need: G_A always; G_B with the cycle loss; D_B
    (and D_A with G_B) with the GAN loss; a teacher and its net (geometry head, U-Net) with its loss. A loss of
    weight 0 never builds (or downloads) its teacher. Built in a fixed order, so the seed fixes every init."""
    m, w = cfg.model, cfg.loss
    g = {"ngf": m.ngf, "n_blocks": m.n_blocks, "upsample": m.upsample}
    nets = {"G_A": create_model("resnet_generator", in_channels=3, out_channels=1, **g)}
    if w.cycle > 0:
        nets["G_B"] = create_model("resnet_generator", in_channels=1, out_channels=3, **g)
    if w.gan > 0:
        nets["D_B"] = create_model("patch_discriminator", in_channels=1, ndf=m.ndf, n_layers=m.n_layers_d)
    if w.gan > 0 and "G_B" in nets:
        nets["D_A"] = create_model("patch_discriminator", in_channels=3, ndf=m.ndf, n_layers=m.n_layers_d)
    for name in ("G_A", "G_B", "D_A", "D_B"):
        if name in nets:
            init_weights(nets[name])
    teachers = Teachers()
    if w.semantic > 0:
        from linedraw.teachers.semantic import build_semantic_encoder

        teachers.semantic = build_semantic_encoder(cfg.semantic.encoder).to(device)
        log.info("semantic teacher: %s", teachers.semantic.name)
    if w.geometry > 0:
        from linedraw.teachers.features import FeatureExtractor

        g = cfg.geometry
        with _names_key("geometry.backbone", g.backbone, "geometry.out_indices"):
            teachers.features = FeatureExtractor(g.backbone, g.backbone_weights, tuple(g.out_indices)).to(device)
        nets["head"] = create_model("geometry_head", in_channels=teachers.features.channels, out_channels=1,
                                    width=g.head_width)
        if g.estimator:
            from linedraw.teachers.targets import build_estimator

            teachers.estimator = build_estimator(g.estimator).to(device)
            log.info("geometry targets: map files where present, else %s (%s)", teachers.estimator.name,
                     teachers.estimator.kind)
    if w.segmentation > 0:
        from linedraw.losses.segmentation import build_unet

        s = cfg.segmentation
        with _names_key("segmentation.encoder", s.encoder):
            nets["unet"] = build_unet(s.encoder, s.num_classes, s.encoder_weights, encoder_depth=s.encoder_depth,
                                      decoder_channels=tuple(s.decoder_channels))
    return {name: nets[name] for name in NET_NAMES if name in nets}, teachers


def build_optimizers(cfg: TrainConfig, nets: dict[str, nn.Module]) -> dict[str, tuple[torch.optim.Optimizer, list]]:
    """Adam per group: generators, discriminators, geometry head, U-Net (each with the nets it steps)."""
    o = cfg.optim
    groups = {"opt_G": ([n for k, n in nets.items() if k.startswith("G_")], o.lr),
              "opt_D": ([n for k, n in nets.items() if k.startswith("D_")], o.lr),
              "opt_head": ([nets["head"]] if "head" in nets else [], cfg.geometry.lr),
              "opt_unet": ([nets["unet"]] if "unet" in nets else [], cfg.segmentation.lr)}
    return {name: (torch.optim.Adam(itertools.chain(*(n.parameters() for n in members)), lr=lr,
                                    betas=(o.beta1, o.beta2)), members)
            for name, (members, lr) in groups.items() if members}


def build_losses(cfg: TrainConfig, teachers: Teachers, nets: dict[str, nn.Module]) -> dict[str, Callable]:
    """The teacher losses and the grey-wash prior as `term(fake_B, batch) -> loss`, in the order they are summed."""
    losses: dict[str, Callable] = {}
    if teachers.semantic is not None:
        from linedraw.losses.semantic import SemanticLoss

        s = cfg.semantic
        semantic = SemanticLoss(teachers.semantic, distance=s.distance, patches=s.patches, patch_size=s.patch_size)
        losses["semantic"] = lambda fake_B, batch: semantic(fake_B, batch["photo"])
    if "head" in nets:
        from linedraw.losses.geometry import GeometryLoss

        geometry = GeometryLoss(teachers.features, nets["head"], kind=cfg.geometry.kind)
        losses["geometry"] = lambda fake_B, batch: geometry(fake_B, batch["target"], batch["has_target"])
    if "unet" in nets:
        from linedraw.losses.segmentation import SegmentationLoss

        segmentation = SegmentationLoss(nets["unet"], ignore_index=cfg.segmentation.ignore_index)
        losses["segmentation"] = lambda fake_B, batch: segmentation(fake_B, batch["mask"], batch["has_mask"])
    if cfg.loss.grey > 0:
        from linedraw.losses.grey import grey_loss

        losses["grey"] = lambda fake_B, batch: grey_loss(fake_B)
    return losses


def fill_targets(run: Run, batch: dict) -> None:
    """Geometry targets for photos without a map file, from the estimator (in place)."""
    if run.estimator is not None and not bool(batch["has_target"].all()):
        with torch.no_grad():
            missing = ~batch["has_target"]
            batch["target"][missing] = run.estimator(batch["photo"][missing]).to(batch["target"].dtype)
            batch["has_target"] = torch.ones_like(batch["has_target"])


def generator_step(run: Run, batch: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One step of the generators (+ geometry head and U-Net, which learn from the same loss); returns the
    weighted terms' values and the fakes the discriminators need."""
    nets, accelerator, real_A, real_B = run.nets, run.accelerator, batch["photo"], batch["drawing"]
    D = {k: accelerator.unwrap_model(nets[k]) for k in ("D_A", "D_B") if k in nets}  # no DDP sync for frozen Ds
    for d in D.values():
        d.requires_grad_(False)
    held = run.state.step < run.cfg.optim.hold_generators_steps
    with accelerator.autocast():
        # While held, the fakes are constants: the head and U-Net learn from them, the generators do not move.
        with torch.no_grad() if held else contextlib.nullcontext():
            fakes = {"B": nets["G_A"](real_A), **({"A": nets["G_B"](real_B)} if "G_B" in nets else {})}
        terms: dict[str, torch.Tensor] = {}
        if "G_B" in nets and not held:
            terms["cycle"] = cycle_loss(nets["G_B"](fakes["B"]), real_A) + cycle_loss(nets["G_A"](fakes["A"]), real_B)
        if "D_B" in D and not held:
            terms["gan"] = lsgan_generator_loss(D["D_B"](run.augment(fakes["B"])))
            if "D_A" in D:
                terms["gan"] = terms["gan"] + lsgan_generator_loss(D["D_A"](run.augment(fakes["A"])))
        for name, term in run.losses.items():
            terms[name] = term(fakes["B"], batch)
        loss_G = sum((getattr(run.cfg.loss, k) * v for k, v in terms.items()), torch.zeros((), device=real_A.device))
    if loss_G.requires_grad:
        accelerator.backward(loss_G)
    for name in ("opt_G", "opt_head", "opt_unet"):
        if name == "opt_G" and held:
            resync(run.schedulers[name], run.state.step + 1)  # the schedule moves on as if it had stepped
        elif name in run.optimizers:
            step_optimizer(run, name)
    return {**terms, "G_total": loss_G}, fakes


def discriminator_step(run: Run, batch: dict, fakes: dict[str, torch.Tensor]) -> torch.Tensor:
    """LSGAN discriminators: real vs (pooled) fake drawings, and photos when there is a G_B."""
    nets, augment = run.nets, run.augment
    for k in ("D_A", "D_B"):
        if k in nets:
            nets[k].requires_grad_(True)
    with run.accelerator.autocast():
        fake_B = run.pools["B"].query(fakes["B"].detach())
        loss_D = lsgan_discriminator_loss(nets["D_B"](augment(batch["drawing"])), nets["D_B"](augment(fake_B)))
        if "D_A" in nets:
            fake_A = run.pools["A"].query(fakes["A"].detach())
            loss_D = loss_D + lsgan_discriminator_loss(nets["D_A"](augment(batch["photo"])),
                                                       nets["D_A"](augment(fake_A)))
    run.accelerator.backward(loss_D)
    step_optimizer(run, "opt_D")
    return loss_D


def step_optimizer(run: Run, name: str) -> None:
    """Clip (when configured), step, zero the gradients and advance the learning-rate schedule of one group."""
    optimizer, members = run.optimizers[name]
    if run.cfg.optim.grad_clip:
        run.accelerator.clip_grad_norm_(itertools.chain(*(n.parameters() for n in members)), run.cfg.optim.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    run.schedulers[name].step()


class Metrics:
    """Running means of the loss terms, written every `log.every` steps to metrics.jsonl, tensorboard and tqdm."""

    def __init__(self, run: Run, out: Path, total_steps: int) -> None:
        from tqdm.auto import tqdm

        self.run, self.path = run, out / "metrics.jsonl"
        self.sums: dict[str, float] = {}
        self.since, self.t_last = 0, time.time()
        self.progress = tqdm(total=total_steps, initial=run.state.step, desc=run.cfg.name, unit="step",
                             disable=not run.accelerator.is_main_process, dynamic_ncols=True)

    def add(self, terms: dict[str, torch.Tensor]) -> dict[str, float] | None:
        """Count one step; returns the values when one of them is not finite (else None)."""
        values = {k: float(v.detach().float()) for k, v in terms.items()}
        self.progress.update(1)
        if not all(math.isfinite(v) for v in values.values()):
            return values
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.since += 1
        return None

    def flush(self, lr: float) -> None:
        """Log the means since the last flush (averaged over processes)."""
        acc, state = self.run.accelerator, self.run.state
        means = {k: float(acc.reduce(torch.tensor(v / self.since, device=acc.device), "mean"))
                 for k, v in sorted(self.sums.items())}
        now = time.time()
        means.update(sec_per_step=(now - self.t_last) / self.since, lr=lr)
        acc.log({k if k in ("sec_per_step", "lr") else f"loss/{k}": v for k, v in means.items()}, step=state.step)
        if acc.is_main_process:
            with open(self.path, "a") as handle:
                handle.write(json.dumps({"step": state.step, "epoch": state.epoch, **means}) + "\n")
        self.progress.set_postfix({k: f"{v:.3g}" for k, v in means.items() if k != "lr"})
        self.sums, self.t_last, self.since = {}, now, 0


def save_samples(run: Run, batch: dict, fake_B: torch.Tensor, out: Path) -> None:
    """photo | drawing | real drawing grid of up to 4 samples, to samples/ and tensorboard (main process)."""
    from torchvision.utils import make_grid, save_image

    n = min(4, batch["photo"].shape[0])
    grid = make_grid(torch.cat([batch["photo"][:n].float(), fake_B[:n].detach().float().expand(-1, 3, -1, -1),
                                batch["drawing"][:n].float().expand(-1, 3, -1, -1)]), nrow=n)
    save_image(grid, out / "samples" / f"step_{run.state.step:08d}.png")
    run.accelerator.get_tracker("tensorboard", unwrap=True).add_image("photo|drawing|real drawing", grid,
                                                                       run.state.step)


def generator_checkpoint(run: Run) -> dict:
    """G_A's JSON config: how to rebuild it, and what trained it (for `linedraw convert` and model cards)."""
    cfg, w = run.cfg, run.cfg.loss
    kwargs = {"in_channels": 3, "out_channels": 1, "ngf": cfg.model.ngf, "n_blocks": cfg.model.n_blocks}
    if cfg.model.upsample != "transpose":  # the default stays implicit, as in checkpoints from before the option
        kwargs["upsample"] = cfg.model.upsample
    return {"model": "resnet_generator", "kwargs": kwargs,
            "training": {"name": cfg.name, "step": run.state.step, "epoch": run.state.epoch,
                         "semantic_teacher": cfg.semantic.encoder if w.semantic > 0 else None,
                         "geometry": (cfg.geometry.estimator or "target maps") if w.geometry > 0 else None,
                         "loss_weights": to_dict(cfg)["loss"], "warm_start": cfg.warm_start, "notes": cfg.notes}}


def setup(cfg: TrainConfig, dataset: Any, out: Path) -> tuple[Run, Any, int, RunCheckpoints]:
    """Accelerator, teachers, nets, optimizers, schedules and loss terms, prepared; returns (run, loader, total
    steps, checkpoints)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader

    from linedraw.data.unpaired import EpochSampler

    accelerator = Accelerator(mixed_precision=cfg.optim.mixed_precision, log_with="tensorboard", project_dir=str(out))
    set_seed(cfg.seed)
    nets, teachers = build_models(cfg, accelerator.device)
    optimizers = build_optimizers(cfg, nets)
    sampler = EpochSampler(len(dataset.photos), len(dataset.drawings), seed=cfg.seed)
    # The loader's own generator: starting an iterator (a resumed run starts one mid-epoch) then leaves the
    # global RNG, which the losses draw from, as it was, so a resumed run draws what an uninterrupted one does.
    loader = DataLoader(dataset, batch_size=cfg.optim.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.data.workers, persistent_workers=cfg.data.workers > 0,
                        pin_memory=torch.cuda.is_available(), worker_init_fn=ignore_stop_signals,
                        generator=torch.Generator().manual_seed(cfg.seed))
    o = cfg.optim
    total = o.epochs * len(loader) if o.max_steps is None else min(o.max_steps, o.epochs * len(loader))
    factor = linear_decay(total, round(total * o.decay_epoch / o.epochs))
    schedulers = {name: schedule(opt, factor) for name, (opt, _) in optimizers.items()}  # not prepared: see schedule
    nets = dict(zip(nets, (accelerator.prepare(net) for net in nets.values())))
    optimizers = {name: (accelerator.prepare(opt), members) for name, (opt, members) in optimizers.items()}
    loader = accelerator.prepare(loader)
    pools = {"A": ImagePool(cfg.model.pool_size, seed=cfg.seed), "B": ImagePool(cfg.model.pool_size, seed=cfg.seed + 1)}
    augment = DiffAugment(cfg.model.diffaugment, accelerator.device, seed=cfg.seed + 2)
    run = Run(cfg, accelerator, nets, optimizers, schedulers, build_losses(cfg, teachers, nets), teachers.estimator,
              pools, augment)
    stateful = {**{k: opt for k, (opt, _) in optimizers.items()}, **{f"lr_{k}": s for k, s in schedulers.items()},
                "pool_A": pools["A"], "pool_B": pools["B"], **({"diffaugment": augment} if augment.policy else {})}
    checkpoints = RunCheckpoints(out / "checkpoints", accelerator, run.state, nets, stateful, keep=cfg.log.keep,
                                 legacy_stateful=("pool_A", "pool_B"))
    return run, loader, total, checkpoints


def train(cfg: TrainConfig, fresh: bool = False) -> int:
    """Run (or resume) the training `cfg` describes; 0 when done, 1 on a non-finite loss, 128+N on signal N."""
    from accelerate import PartialState

    from linedraw.data.unpaired import UnpairedDataset

    processes = PartialState()
    logging.basicConfig(level=logging.INFO if processes.is_main_process else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    dataset = UnpairedDataset.from_config(cfg.data)  # checked before anything is written
    if cfg.loss.geometry > 0 and not cfg.geometry.estimator and all(p.target is None for p in dataset.photos):
        raise ConfigError("loss.geometry > 0 but no photo has a target map and geometry.estimator is not set",
                          "geometry.estimator")
    if len(dataset) < cfg.optim.batch_size * processes.num_processes:
        raise ConfigError(f"optim.batch_size={cfg.optim.batch_size}: {len(dataset)} photos is fewer than one batch "
                          f"({cfg.optim.batch_size} x {processes.num_processes} processes)", "optim.batch_size")
    if cfg.loss.segmentation > 0 and all(p.mask is None for p in dataset.photos):
        log.warning("loss.segmentation > 0 but no photo has a mask: the loss will be 0 throughout")
    out = Path(cfg.output_dir)
    old_checkpoints = out / "checkpoints"
    if fresh and old_checkpoints.exists() and processes.is_main_process:  # kept, out of the new run's way
        aside = out / f"checkpoints.before-fresh-{time.strftime('%Y%m%d-%H%M%S')}"
        old_checkpoints.rename(aside)
        log.info("--fresh: the earlier checkpoints moved to %s", aside)
    processes.wait_for_everyone()
    run, loader, total, checkpoints = setup(cfg, dataset, out)
    acc, state = run.accelerator, run.state
    # Resume or warm start before anything is written: a bad source leaves no run folder behind.
    resumed = None if fresh else checkpoints.resume()
    if resumed is None and cfg.warm_start:
        from linedraw.training.warm_start import warm_start

        warm_start({k: acc.unwrap_model(net) for k, net in run.nets.items()}, cfg.warm_start)
    if acc.is_main_process:
        (out / "samples").mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    acc.init_trackers(cfg.name)
    log.info("run %s -> %s on %s x%d (%s); %d photos (%d with masks, %d with target maps), %d drawings", cfg.name,
             out, acc.device, acc.num_processes, cfg.optim.mixed_precision, len(dataset.photos),
             sum(p.mask is not None for p in dataset.photos), sum(p.target is not None for p in dataset.photos),
             len(dataset.drawings))
    if cfg.notes:
        log.info("notes: %s", cfg.notes)
    if resumed is not None:
        log.info("resumed from %s at step %d (epoch %d, batch %d)", resumed, state.step, state.epoch,
                 state.batch_in_epoch)
    for scheduler in run.schedulers.values():
        resync(scheduler, state.step)
    metrics = Metrics(run, out, total)
    with StopOnSignal() as stop:
        code = loop(run, loader, total, checkpoints, metrics, stop, out)
    metrics.progress.close()
    acc.end_training()
    if code == 0 and stop.requested:
        log.info("stopped by signal %d at step %d; run the same command to resume", stop.signum, state.step)
        return 128 + stop.signum
    if code == 0:
        log.info("done: %d steps; G_A for conversion: %s", state.step, checkpoints.latest())
    return code


def loop(run: Run, loader: Any, total: int, checkpoints: RunCheckpoints, metrics: Metrics, stop: StopOnSignal,
         out: Path) -> int:
    """The steps, from the run's state to `total`; saves every `log.save_every` steps, at the end and on a signal."""
    from linedraw.checkpoint import save_generator

    cfg, acc, state = run.cfg, run.accelerator, run.state
    while state.step < total and not stop.requested:
        loader.set_epoch(state.epoch)
        for batch in acc.skip_first_batches(loader, state.batch_in_epoch) if state.batch_in_epoch else loader:
            lr = run.schedulers["opt_G"].get_last_lr()[0]
            fill_targets(run, batch)
            terms, fakes = generator_step(run, batch)
            if "opt_D" in run.optimizers:
                terms["D"] = discriminator_step(run, batch, fakes)
            state.step += 1
            state.batch_in_epoch += 1
            bad = metrics.add(terms)
            if bad is not None:
                log.error("non-finite loss at step %d: %s; stopping without saving this state (the last checkpoint "
                          "in %s is intact)", state.step, bad, checkpoints.root)
                return 1
            last = state.step >= total
            if state.step % cfg.log.every == 0 or last:
                metrics.flush(lr)
            if (state.step % cfg.log.images_every == 0 or last) and acc.is_main_process:
                save_samples(run, batch, fakes["B"], out)
            if state.step % cfg.log.save_every == 0 or last or stop.requested:
                G_A = acc.unwrap_model(run.nets["G_A"])
                saved = checkpoints.save(lambda tmp: save_generator(G_A, tmp / "G_A", generator_checkpoint(run)))
                log.info("saved %s", saved)
            if last or stop.requested:
                return 0
        state.epoch += 1
        state.batch_in_epoch = 0
    return 0
