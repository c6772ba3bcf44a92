"""Train a photo -> line-drawing generator (Chan, Durand & Isola 2022, plus the segmentation loss).

    accelerate launch train/train.py --config train/configs/contour-offline.yaml [key.sub=value ...]
    python train/train.py --config train/configs/smoke.yaml            # one process, CPU or one GPU

The loop reads top to bottom: config -> data -> models -> teachers -> losses -> optimizers -> steps. A run folder
holds `config.yaml`, `metrics.jsonl`, tensorboard logs, `samples/` and `checkpoints/step_XXXXXXXX/` (a full
resumable state plus `G_A.safetensors` + `G_A.json`, which `linedraw convert --checkpoint RUN_DIR` loads).
Running the same command again resumes from `checkpoints/latest`.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from torchvision.utils import make_grid, save_image
from tqdm.auto import tqdm

from linedraw.checkpoint import save_generator
from linedraw.config import ConfigError, TrainConfig, load_config, save_config, to_dict
from linedraw.data.unpaired import EpochSampler, UnpairedDataset
from linedraw.errors import LinedrawError
from linedraw.losses.cycle import cycle_loss
from linedraw.losses.gan import lsgan_discriminator_loss, lsgan_generator_loss
from linedraw.models import create_model
from linedraw.models.pool import ImagePool
from linedraw.training.checkpoints import RunCheckpoints
from linedraw.training.schedules import linear_decay, resync, schedule
from linedraw.training.signals import StopOnSignal, ignore_stop_signals
from linedraw.training.state import RunState

log = logging.getLogger("linedraw.train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file (see train/configs/)")
    parser.add_argument("--fresh", action="store_true", help="ignore checkpoints in output_dir and start over")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.max_steps=100 data.size=128")
    return parser.parse_args(argv)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return train(load_config(args.config, args.overrides), fresh=args.fresh)
    except LinedrawError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def train(cfg: TrainConfig, fresh: bool = False) -> int:
    processes = PartialState()
    logging.basicConfig(level=logging.INFO if processes.is_main_process else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # ---- data first: nothing is written before the config and the data are known to be usable ------------
    dataset = UnpairedDataset.from_config(cfg.data)
    w = cfg.loss
    if w.geometry > 0 and not cfg.geometry.estimator and not any(p.target is not None for p in dataset.photos):
        raise ConfigError("loss.geometry > 0 but no photo has a target map and geometry.estimator is not set",
                          "geometry.estimator")
    if len(dataset) < cfg.optim.batch_size * processes.num_processes:
        raise ConfigError(f"optim.batch_size={cfg.optim.batch_size}: {len(dataset)} photos is fewer than one batch "
                          f"({cfg.optim.batch_size} x {processes.num_processes} processes)", "optim.batch_size")
    out = Path(cfg.output_dir)
    accelerator = Accelerator(mixed_precision=cfg.optim.mixed_precision, log_with="tensorboard", project_dir=str(out))
    set_seed(cfg.seed)
    if accelerator.is_main_process:
        (out / "samples").mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    accelerator.init_trackers(cfg.name)
    log.info("run %s -> %s on %s x%d (%s)", cfg.name, out, accelerator.device, accelerator.num_processes,
             cfg.optim.mixed_precision)
    if cfg.notes:
        log.info("notes: %s", cfg.notes)

    # ---- data ----------------------------------------------------------------------------------------
    sampler = EpochSampler(len(dataset.photos), len(dataset.drawings), seed=cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.optim.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.data.workers, persistent_workers=cfg.data.workers > 0,
                        pin_memory=torch.cuda.is_available(), worker_init_fn=ignore_stop_signals)
    log.info("data: %d photos (%d with masks, %d with target maps), %d drawings",
             len(dataset.photos), sum(p.mask is not None for p in dataset.photos),
             sum(p.target is not None for p in dataset.photos), len(dataset.drawings))

    # ---- models: only what the enabled losses need ----------------------------------------------------
    m = cfg.model
    G_A = create_model("resnet_generator", in_channels=3, out_channels=1, ngf=m.ngf, n_blocks=m.n_blocks)
    G_B = create_model("resnet_generator", in_channels=1, out_channels=3, ngf=m.ngf, n_blocks=m.n_blocks) \
        if w.cycle > 0 else None
    D_B = create_model("patch_discriminator", in_channels=1, ndf=m.ndf, n_layers=m.n_layers_d) if w.gan > 0 else None
    D_A = create_model("patch_discriminator", in_channels=3, ndf=m.ndf, n_layers=m.n_layers_d) \
        if w.gan > 0 and G_B is not None else None
    for net in (G_A, G_B, D_A, D_B):
        if net is not None:
            init_weights(net)
    generators = [n for n in (G_A, G_B) if n is not None]
    discriminators = [n for n in (D_A, D_B) if n is not None]

    # ---- teachers (frozen) and the trainable nets their losses carry ------------------------------------
    head = unet = features = estimator = semantic_encoder = None
    if w.semantic > 0:
        from linedraw.teachers.semantic import build_semantic_encoder

        semantic_encoder = build_semantic_encoder(cfg.semantic.encoder).to(accelerator.device)
        log.info("semantic teacher: %s", semantic_encoder.name)
    if w.geometry > 0:
        from linedraw.teachers.features import FeatureExtractor

        features = FeatureExtractor(cfg.geometry.backbone, cfg.geometry.backbone_weights,
                                    tuple(cfg.geometry.out_indices)).to(accelerator.device)
        head = create_model("geometry_head", in_channels=features.channels, out_channels=1,
                            width=cfg.geometry.head_width)
        if cfg.geometry.estimator:
            from linedraw.teachers.targets import build_estimator

            estimator = build_estimator(cfg.geometry.estimator).to(accelerator.device)
            log.info("geometry targets: map files where present, else %s (%s)", estimator.name, estimator.kind)
    if w.segmentation > 0:
        from linedraw.losses.segmentation import build_unet

        s = cfg.segmentation
        unet = build_unet(s.encoder, s.num_classes, s.encoder_weights, encoder_depth=s.encoder_depth,
                          decoder_channels=tuple(s.decoder_channels))
        if not any(p.mask is not None for p in dataset.photos):
            log.warning("loss.segmentation > 0 but no photo has a mask: the loss will be 0 throughout")

    # ---- optimizers -------------------------------------------------------------------------------------
    o = cfg.optim
    betas = (o.beta1, o.beta2)
    opt_G = torch.optim.Adam(itertools.chain(*(g.parameters() for g in generators)), lr=o.lr, betas=betas)
    opt_D = torch.optim.Adam(itertools.chain(*(d.parameters() for d in discriminators)), lr=o.lr, betas=betas) \
        if discriminators else None
    opt_head = torch.optim.Adam(head.parameters(), lr=cfg.geometry.lr, betas=betas) if head is not None else None
    opt_unet = torch.optim.Adam(unet.parameters(), lr=cfg.segmentation.lr, betas=betas) if unet is not None else None
    optimizers = [opt for opt in (opt_G, opt_D, opt_head, opt_unet) if opt is not None]

    # prepare() wraps for DDP / mixed precision and places on the device; None stays None.
    G_A, G_B, D_A, D_B, head, unet, loader = (
        accelerator.prepare(x) if x is not None else None for x in (G_A, G_B, D_A, D_B, head, unet, loader))
    optimizers = [accelerator.prepare(opt) for opt in optimizers]
    opt_G, opt_D, opt_head, opt_unet = (
        optimizers.pop(0) if opt is not None else None for opt in (opt_G, opt_D, opt_head, opt_unet))
    optimizers = [opt for opt in (opt_G, opt_D, opt_head, opt_unet) if opt is not None]

    from linedraw.losses.geometry import GeometryLoss
    from linedraw.losses.segmentation import SegmentationLoss
    from linedraw.losses.semantic import SemanticLoss

    semantic_loss = SemanticLoss(semantic_encoder, distance=cfg.semantic.distance, patches=cfg.semantic.patches,
                                 patch_size=cfg.semantic.patch_size) if semantic_encoder is not None else None
    geometry_loss = GeometryLoss(features, head, kind=cfg.geometry.kind) if head is not None else None
    segmentation_loss = SegmentationLoss(unet, ignore_index=cfg.segmentation.ignore_index) \
        if unet is not None else None

    pool_A, pool_B = ImagePool(m.pool_size, seed=cfg.seed), ImagePool(m.pool_size, seed=cfg.seed + 1)
    state = RunState()

    steps_per_epoch = len(loader)
    total_steps = o.epochs * steps_per_epoch if o.max_steps is None else min(o.max_steps, o.epochs * steps_per_epoch)
    decay_start = round(total_steps * o.decay_epoch / o.epochs)
    factor = linear_decay(total_steps, decay_start)
    named_opts = {name: opt for name, opt in zip(("opt_G", "opt_D", "opt_head", "opt_unet"),
                                                 (opt_G, opt_D, opt_head, opt_unet)) if opt is not None}
    schedulers = {f"lr_{name}": schedule(opt.optimizer, factor) for name, opt in named_opts.items()}
    ckpt_root = out / "checkpoints"
    nets = {name: net for name, net in (("G_A", G_A), ("G_B", G_B), ("D_A", D_A), ("D_B", D_B), ("head", head),
                                        ("unet", unet)) if net is not None}
    checkpoints = RunCheckpoints(ckpt_root, accelerator, state, nets,
                                 {**named_opts, **schedulers, "pool_A": pool_A, "pool_B": pool_B}, keep=cfg.log.keep,
                                 legacy_stateful=("pool_A", "pool_B"))

    # ---- resume ---------------------------------------------------------------------------------------
    if not fresh:
        resume_dir = checkpoints.resume()
        if resume_dir is not None:
            log.info("resumed from %s at step %d (epoch %d, batch %d)", resume_dir, state.step, state.epoch,
                     state.batch_in_epoch)
    for scheduler in schedulers.values():
        resync(scheduler, state.step)

    def save_checkpoint() -> None:
        """Full state (written beside, then renamed) + G_A for conversion; keeps the newest few."""
        generator_config = {
            "model": "resnet_generator",
            "kwargs": {"in_channels": 3, "out_channels": 1, "ngf": m.ngf, "n_blocks": m.n_blocks},
            "training": {"name": cfg.name, "step": state.step, "epoch": state.epoch,
                         "semantic_teacher": cfg.semantic.encoder if w.semantic > 0 else None,
                         "geometry": (cfg.geometry.estimator or "target maps") if w.geometry > 0 else None,
                         "loss_weights": to_dict(cfg)["loss"], "notes": cfg.notes},
        }
        saved = checkpoints.save(lambda tmp: save_generator(accelerator.unwrap_model(G_A), tmp / "G_A",
                                                            generator_config))
        log.info("saved %s", saved)


    # ---- the loop -------------------------------------------------------------------------------------
    with StopOnSignal() as stop:
        D_A_plain = accelerator.unwrap_model(D_A) if D_A is not None else None
        D_B_plain = accelerator.unwrap_model(D_B) if D_B is not None else None
        progress = tqdm(total=total_steps, initial=state.step, disable=not accelerator.is_main_process,
                        desc=cfg.name, unit="step", dynamic_ncols=True)
        running: dict[str, float] = {}
        t_last, steps_since = time.time(), 0
        while state.step < total_steps and not stop.requested:
            loader.set_epoch(state.epoch)
            epoch_loader = accelerator.skip_first_batches(loader, state.batch_in_epoch) if state.batch_in_epoch else loader
            for batch in epoch_loader:
                lr = o.lr * factor(state.step)
                real_A, real_B = batch["photo"], batch["drawing"]
                if estimator is not None and not bool(batch["has_target"].all()):
                    with torch.no_grad():
                        missing = ~batch["has_target"]
                        batch["target"][missing] = estimator(real_A[missing]).to(batch["target"].dtype)
                        batch["has_target"] = torch.ones_like(batch["has_target"])

                # -- generators (+ geometry head and U-Net, which learn from the same loss) --
                for d in discriminators:
                    d.requires_grad_(False)
                with accelerator.autocast():
                    fake_B = G_A(real_A)
                    terms: dict[str, torch.Tensor] = {}
                    if G_B is not None:
                        rec_A = G_B(fake_B)
                        fake_A = G_B(real_B)
                        rec_B = G_A(fake_A)
                        terms["cycle"] = cycle_loss(rec_A, real_A) + cycle_loss(rec_B, real_B)
                    if D_B_plain is not None:
                        terms["gan"] = lsgan_generator_loss(D_B_plain(fake_B))
                        if D_A_plain is not None:
                            terms["gan"] = terms["gan"] + lsgan_generator_loss(D_A_plain(fake_A))
                    if semantic_loss is not None:
                        terms["semantic"] = semantic_loss(fake_B, real_A)
                    if geometry_loss is not None:
                        terms["geometry"] = geometry_loss(fake_B, batch["target"], batch["has_target"])
                    if segmentation_loss is not None:
                        terms["segmentation"] = segmentation_loss(fake_B, batch["mask"], batch["has_mask"])
                    loss_G = sum(getattr(w, k) * v for k, v in terms.items())
                accelerator.backward(loss_G)
                for opt, nets in ((opt_G, generators), (opt_head, [head]), (opt_unet, [unet])):
                    if opt is None:
                        continue
                    if o.grad_clip:
                        accelerator.clip_grad_norm_(itertools.chain(*(n.parameters() for n in nets)), o.grad_clip)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    schedulers[f"lr_{next(k for k, v in named_opts.items() if v is opt)}"].step()

                # -- discriminators: real vs (pooled) fake, LSGAN --
                if opt_D is not None:
                    for d in discriminators:
                        d.requires_grad_(True)
                    with accelerator.autocast():
                        loss_D = lsgan_discriminator_loss(D_B(real_B), D_B(pool_B.query(fake_B.detach())))
                        if D_A is not None:
                            loss_D = loss_D + lsgan_discriminator_loss(D_A(real_A), D_A(pool_A.query(fake_A.detach())))
                    accelerator.backward(loss_D)
                    opt_D.step()
                    opt_D.zero_grad(set_to_none=True)
                    schedulers["lr_opt_D"].step()
                    terms["D"] = loss_D

                state.step += 1
                state.batch_in_epoch += 1
                steps_since += 1
                progress.update(1)

                values = {k: v.detach().float() for k, v in terms.items()}
                values["G_total"] = loss_G.detach().float()
                if not all(torch.isfinite(v) for v in values.values()):
                    bad = {k: float(v) for k, v in values.items()}
                    print(f"error: non-finite loss at step {state.step}: {bad}; stopping without saving this state "
                          f"(the last checkpoint in {ckpt_root} is intact)", file=sys.stderr)
                    accelerator.end_training()
                    return 1
                for k, v in values.items():
                    running[k] = running.get(k, 0.0) + float(v)

                if state.step % cfg.log.every == 0 or state.step == total_steps:
                    means = {k: v / steps_since for k, v in running.items()}
                    means = {k: float(accelerator.reduce(torch.tensor(v, device=accelerator.device), "mean"))
                             for k, v in sorted(means.items())}
                    now = time.time()
                    means["sec_per_step"] = (now - t_last) / steps_since
                    means["lr"] = lr
                    accelerator.log({f"loss/{k}" if k not in ("sec_per_step", "lr") else k: v
                                     for k, v in means.items()}, step=state.step)
                    if accelerator.is_main_process:
                        with open(out / "metrics.jsonl", "a") as f:
                            f.write(json.dumps({"step": state.step, "epoch": state.epoch, **means}) + "\n")
                    progress.set_postfix({k: f"{v:.3g}" for k, v in means.items() if k != "lr"})
                    running, t_last, steps_since = {}, now, 0

                if (state.step % cfg.log.images_every == 0 or state.step == total_steps) \
                        and accelerator.is_main_process:
                    n = min(4, real_A.shape[0])
                    grid = make_grid(torch.cat([real_A[:n].float(), fake_B[:n].detach().float().expand(-1, 3, -1, -1),
                                                real_B[:n].float().expand(-1, 3, -1, -1)]), nrow=n)
                    save_image(grid, out / "samples" / f"step_{state.step:08d}.png")
                    accelerator.get_tracker("tensorboard", unwrap=True).add_image("photo|drawing|real drawing", grid,
                                                                                   state.step)

                if state.step % cfg.log.save_every == 0 or state.step == total_steps or stop.requested:
                    save_checkpoint()
                if state.step >= total_steps or stop.requested:
                    break
            else:
                state.epoch += 1
                state.batch_in_epoch = 0

        progress.close()
        accelerator.end_training()
        if stop.requested:
            log.info("stopped by signal %d at step %d; run the same command to resume", stop.signum, state.step)
            return 128 + stop.signum
        log.info("done: %d steps; G_A for conversion: %s", state.step, checkpoints.latest())
        return 0


if __name__ == "__main__":
    sys.exit(main())
