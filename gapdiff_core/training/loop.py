"""The GAP-Diff training loop: D step, optional DreamBooth rounds on the surrogate, G step; with accelerate.

One step (official order): G makes protected images, the preprocessing simulation p() is drawn for the batch;
every K steps the surrogate's UNet gets M DreamBooth steps on (protected, p(protected)) plus λ·prior on class images;
the critic learns clean vs p(protected); the generator minimises α·L_GAN + β·L_adv(protected) + γ·L_adv(p(protected)).
RNG: the global torch RNG is re-seeded from (seed, process, step) at every step, and the preprocessing sampler's own
generator is checkpointed, so a resumed run continues on exactly the same trajectory.
"""
from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Optional

import torch

from .. import losses
from ..common import seeds
from ..model.checkpoint import GeneratorInfo, save_generator
from ..model.generator import Discriminator, Generator
from ..common.optimizer_state import flatten_optimizer, unflatten_optimizer
from ..preprocess import PreprocessSampler
from . import state as ckpt
from .config import TrainConfig, preprocess_config
from .data import EpochSampler, ImageFolderDataset, split_train_val
from .finetune import SurrogateFinetuner
from .lock import holding_run_lock
from .validation import evaluate_generator, protect_batch, save_grid, validation_images
from .warmup import warm_up_surrogate

log = logging.getLogger("gapdiff.train")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_surrogate(cfg: TrainConfig):
    """The surrogate named by ``cfg.surrogate`` ("tiny", "tiny-sd2", a folder or a single file)."""
    from ..diffusion import load_surrogate

    return load_surrogate(cfg.surrogate, config=cfg.surrogate_config, seed=cfg.surrogate_seed)


def _lr_lambda(kind: str, total: int):
    if kind == "cosine":
        return lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / max(total, 1)))
    return lambda s: 1.0


class Trainer:
    """Builds everything from a :class:`TrainConfig`; ``run()`` trains, checkpoints, validates and exports.

    ``surrogate`` may be passed in (tests share one tiny model); ``history`` holds one dict of losses per step.
    """

    def __init__(self, cfg: TrainConfig, surrogate=None, accelerator=None):
        from accelerate import Accelerator

        self.cfg = cfg.validate()
        # cpu=True without CUDA lets accelerate pick up torchrun's environment as MULTI_CPU (gloo)
        self.acc = accelerator or Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
        self.device = self.acc.device
        self.out = Path(cfg.output_dir)
        torch.manual_seed(cfg.seed)  # identical initial weights on every process
        self.surrogate = surrogate if surrogate is not None else build_surrogate(cfg)
        dtype = DTYPES[cfg.surrogate_dtype]
        self.surrogate.to(self.device, dtype if dtype != self.surrogate.dtype else None)
        self.surrogate.freeze()
        if cfg.gradient_checkpointing:
            self.surrogate.enable_gradient_checkpointing()
        generator, discriminator = Generator(cfg.ngf), Discriminator(cfg.disc_ngf, cfg.disc_blocks)
        betas = tuple(cfg.adam_betas)
        opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=betas)
        opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.disc_lr, betas=betas)

        train_paths, self.val_paths = split_train_val(cfg.train_dir, cfg.val_dir, cfg.val_count, cfg.resolution,
                                                      cfg.min_side_fraction, cfg.max_aspect)
        self.dataset = ImageFolderDataset(train_paths, cfg.resolution, cfg.augment, cfg.seed,
                                          cache=len(train_paths) <= 64)
        self.data_sampler = EpochSampler(len(self.dataset), cfg.seed)
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=self.data_sampler,
                                             num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(0))
        (self.generator, self.discriminator, self.opt_g, self.opt_d, self.loader) = self.acc.prepare(
            generator, discriminator, opt_g, opt_d, loader)
        self.steps_per_epoch = max(len(self.loader), 1)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        # plain schedulers, stepped once per step (accelerate's wrapper would step them once per process)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g.optimizer if hasattr(self.opt_g, "optimizer")
                                                         else self.opt_g, _lr_lambda(cfg.lr_schedule, self.total_steps))
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d.optimizer if hasattr(self.opt_d, "optimizer")
                                                         else self.opt_d, _lr_lambda(cfg.lr_schedule, self.total_steps))
        self.preprocess = PreprocessSampler(preprocess_config(cfg.preprocess),
                                            seed=seeds.derive_seed(seeds.PROCESS, cfg.seed, self.acc.process_index))
        self.finetuner = SurrogateFinetuner(cfg, self.surrogate, self.acc) if cfg.finetune_steps > 0 else None
        if cfg.surrogate_warmup_steps > 0:  # deterministic, so a resumed run rebuilds the same surrogate
            warm_up_surrogate(self.surrogate, self.dataset, cfg.surrogate_warmup_steps, cfg.surrogate_warmup_lr,
                              seed=cfg.seed, sample_latents=cfg.sample_latents)
        self.instance_embeds = self.surrogate.encode_prompt(cfg.instance_prompt)
        self.step = 0
        self.history: list[dict] = []
        self._writer = None
        self.run_id: Optional[str] = None  # set by run(): a new id, or the resumed run's own

    # ------------------------------------------------------------ helpers
    @property
    def loss_kwargs(self) -> dict:
        c = self.cfg
        return {"weighting": c.weighting, "dist": c.distance, "snr_gamma": c.snr_gamma,
                "official_uniform_noise": c.official_uniform_noise, "sample_latents": c.sample_latents,
                "noise_samples": c.noise_samples}

    def _seed_step(self, step: int) -> None:
        torch.manual_seed(seeds.derive_seed(seeds.STEP, self.cfg.seed, self.acc.process_index, step))
        random.seed(step)

    def unwrapped_generator(self) -> Generator:
        return self.acc.unwrap_model(self.generator)

    # ------------------------------------------------------------ one step
    def train_step(self, clean: torch.Tensor) -> dict:
        """One generator/discriminator step on a batch of clean images in [0, 1]; returns the logged values."""
        cfg, acc = self.cfg, self.acc
        self._seed_step(self.step)
        w = losses.scheduled_weights(cfg.schedule, losses.LossWeights(cfg.alpha, cfg.beta, cfg.gamma),
                                     self.step / max(self.total_steps, 1), cfg.schedule_switch)
        self.generator.train()
        self.discriminator.train()
        with acc.autocast():
            raw = self.generator(clean * 2 - 1).float()
        protected = (clean + raw * (cfg.budget / 255.0)).clamp(0, 1)
        preprocessed, pre_name = self.preprocess(protected)
        row: dict[str, Any] = {"step": self.step + 1, "preprocess": pre_name}
        if cfg.finetune_steps > 0 and self.step % cfg.finetune_every == 0:
            row["finetune_loss"] = self.finetuner(protected, preprocessed, clean)
        # critic: clean -> 1, preprocessed protected -> 0 (each half back-propagated after its own forward)
        self.opt_d.zero_grad(set_to_none=True)
        with acc.no_sync(self.discriminator):
            with acc.autocast():
                d_real = losses.discriminator_real_loss(self.discriminator, clean * 2 - 1)
            acc.backward(d_real)
        with acc.autocast():
            d_fake = losses.discriminator_fake_loss(self.discriminator, preprocessed * 2 - 1)
        acc.backward(d_fake)
        self.opt_d.step()
        self.sched_d.step()
        # generator
        self.opt_g.zero_grad(set_to_none=True)
        with acc.autocast():
            gan = losses.generator_gan_loss(self.discriminator, preprocessed * 2 - 1)
            total = w.alpha * gan
            adv_p = adv_pre = torch.zeros((), device=self.device)
            if w.beta:
                adv_p = losses.adversarial_loss(self.surrogate, protected, self.instance_embeds, **self.loss_kwargs)
                total = total + w.beta * adv_p
            if w.gamma:
                adv_pre = losses.adversarial_loss(self.surrogate, preprocessed, self.instance_embeds,
                                                  **self.loss_kwargs)
                total = total + w.gamma * adv_pre
        acc.backward(total)
        self.opt_g.step()
        self.sched_g.step()
        self.discriminator.zero_grad(set_to_none=True)  # the G step's gradients on D are not used
        self.step += 1
        row.update(loss_total=float(total.detach()), loss_gan=float(gan.detach()), adv_protected=float(adv_p.detach()),
                   adv_preprocessed=float(adv_pre.detach()), d_loss=float((d_real + d_fake).detach()),
                   beta=w.beta, gamma=w.gamma, lr=self.sched_g.get_last_lr()[0])
        return row

    # ------------------------------------------------------------ checkpoints
    def state_for_checkpoint(self) -> tuple[dict, dict]:
        tensors: dict = {}
        meta: dict = {"step": self.step, "run_id": self.run_id, "config_hash": ckpt.config_hash(self.cfg.to_dict()),
                      "config": self.cfg.to_dict(), "sched_g": self.sched_g.state_dict(),
                      "sched_d": self.sched_d.state_dict(), "python_random": _json_random_state(),
                      "num_processes": self.acc.num_processes}
        tensors.update(ckpt.prefixed("generator", self.unwrapped_generator().state_dict()))
        tensors.update(ckpt.prefixed("discriminator", self.acc.unwrap_model(self.discriminator).state_dict()))
        flatten_optimizer("opt_g", self.opt_g.state_dict(), tensors, meta)
        flatten_optimizer("opt_d", self.opt_d.state_dict(), tensors, meta)
        if self.finetuner is not None:
            tensors.update(ckpt.prefixed("unet", self.surrogate.unet.state_dict()))
            flatten_optimizer("opt_unet", self.finetuner.optimizer.state_dict(), tensors, meta)
        tensors["rng/torch"] = torch.get_rng_state()
        tensors["rng/preprocess"] = self.preprocess.generator.get_state()
        if torch.cuda.is_available():
            tensors["rng/cuda"] = torch.cuda.get_rng_state()
        return tensors, meta

    def save_checkpoint(self) -> Optional[Path]:
        """Main process writes ``checkpoints/step-NNNNNNNN`` atomically; older ones beyond ``keep_checkpoints`` are
        removed only after it is in place."""
        tensors, meta = self.state_for_checkpoint()
        path = None
        if self.acc.is_main_process:
            path = ckpt.save_checkpoint(self.out, self.step, tensors, meta, self.cfg.keep_checkpoints)
        self.acc.wait_for_everyone()
        return path

    def load_checkpoint(self, folder: Path) -> None:
        """Restore the whole training state; a damaged or foreign checkpoint raises :class:`ckpt.ResumeError`."""
        tensors, meta = ckpt.read_checkpoint(folder)
        try:
            self._restore(tensors, meta, folder)
        except ckpt.ResumeError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
            raise ckpt.ResumeError(f"{folder}: cannot restore the training state from it ({type(exc).__name__}: "
                                   f"{str(exc)[:300]}); it is damaged or was written by another version") from None
        log.info("resumed from %s at step %d", folder, self.step)

    def _restore(self, tensors: dict, meta: dict, folder: Path) -> None:
        self.unwrapped_generator().load_state_dict(ckpt.unprefixed("generator", tensors))
        self.acc.unwrap_model(self.discriminator).load_state_dict(ckpt.unprefixed("discriminator", tensors))
        self.opt_g.load_state_dict(unflatten_optimizer("opt_g", tensors, meta))
        self.opt_d.load_state_dict(unflatten_optimizer("opt_d", tensors, meta))
        self.sched_g.load_state_dict(meta["sched_g"])
        self.sched_d.load_state_dict(meta["sched_d"])
        if self.finetuner is not None:
            if "opt_unet" not in meta:
                raise ValueError(f"{folder}: saved without surrogate fine-tuning; cannot resume with finetune_steps>0")
            self.surrogate.unet.load_state_dict(ckpt.unprefixed("unet", tensors))
            self.finetuner.optimizer.load_state_dict(unflatten_optimizer("opt_unet", tensors, meta))
        torch.set_rng_state(tensors["rng/torch"])
        self.preprocess.generator.set_state(tensors["rng/preprocess"])
        if "rng/cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng/cuda"])
        random.setstate(_random_state_from_json(meta["python_random"]))
        self.step = int(meta["step"])
        if not 0 <= self.step <= self.total_steps:
            raise ValueError(f"step {self.step} is outside this run's 0..{self.total_steps} steps")

    # ------------------------------------------------------------ logging and validation
    def _log(self, row: dict, file: str = "log.csv") -> None:
        if not self.acc.is_main_process:
            return
        ckpt.append_log(self.out / file, row)
        if self._writer is not None:
            tag = "val" if file != "log.csv" else "train"
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._writer.add_scalar(f"{tag}/{k}", v, row["step"])

    def _open_tensorboard(self) -> None:
        if not (self.cfg.tensorboard and self.acc.is_main_process):
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional (the `tensorboard` extra)
            return
        # a resumed run drops the events it is about to log again
        self._writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.step or None)

    def validate(self) -> dict:
        """Validation metrics on the fixed held-out batch (main process), logged to val.csv with a grid PNG."""
        if not self.acc.is_main_process:
            return {}
        if not hasattr(self, "_val_images"):
            self._val_images = validation_images(self.val_paths, self.cfg.resolution, self.cfg.val_count)
        g = self.unwrapped_generator()
        t = losses.fixed_timesteps(self.cfg.val_timesteps, self.surrogate.scheduler.config.num_train_timesteps)
        kw = dict(self.loss_kwargs, weighting="uniform", noise_samples=1)
        protected = protect_batch(g, self._val_images.to(self.device), self.cfg.budget)
        metrics = evaluate_generator(g, self.surrogate, self._val_images, self.cfg.budget, self.instance_embeds, t,
                                     self.cfg.val_jpeg_quality, protected=protected, **kw)
        save_grid(self.out / "grids" / f"step-{self.step:08d}.png", self._val_images, protected.cpu(), self.cfg.budget)
        row = {"step": self.step, **metrics}
        self._log(row, "val.csv")
        return row

    # ------------------------------------------------------------ the loop
    def run(self, resume: Optional[str] = None, overwrite: bool = False, stop_after: Optional[int] = None,
            validate: bool = True, time_limit_s: Optional[float] = None) -> dict:
        """Train to ``total_steps`` and export; returns a summary.

        ``resume``: None (``output_dir`` must be empty unless ``overwrite``), ``"auto"`` or a checkpoint folder; see
        :func:`state.plan_run`, which raises :class:`state.ResumeError` for any folder it cannot use as asked.
        ``stop_after``: stop after that many steps without exporting (as if killed). ``time_limit_s``: end training
        early when the time is up, then validate and export as if finished (used by the demo). The main process
        holds the output folder's lock (:mod:`.lock`) throughout: a second trainer there gets RunLockedError."""
        if not self.acc.is_main_process:
            return self._run(resume, overwrite, stop_after, validate, time_limit_s)
        with holding_run_lock(self.out):
            return self._run(resume, overwrite, stop_after, validate, time_limit_s)

    def _run(self, resume, overwrite, stop_after, validate, time_limit_s) -> dict:
        from tqdm.auto import tqdm

        cfg = self.cfg
        plan = ckpt.plan_run(self.out, cfg.to_dict(), resume, overwrite)
        self.acc.wait_for_everyone()  # every process has looked before the main one writes
        if self.acc.is_main_process:
            ckpt.start_run(self.out, plan, cfg.to_dict())
        self.acc.wait_for_everyone()
        self.run_id = plan.run_id if self.acc.is_main_process else ckpt.read_run(self.out)["run_id"]
        if plan.checkpoint is not None:
            self.load_checkpoint(plan.checkpoint)
        self._open_tensorboard()
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (cfg.progress and self.acc.is_main_process),
                   desc="gapdiff train", unit="step", dynamic_ncols=True)
        start = time.perf_counter()
        steps_done, out_of_time = 0, False
        while self.step < self.total_steps:
            epoch, skip = divmod(self.step, self.steps_per_epoch)
            loader = self.acc.skip_first_batches(self.loader, skip) if skip else self.loader
            if hasattr(loader, "set_epoch"):  # accelerate re-applies its own epoch counter at every __iter__
                loader.set_epoch(epoch)
            self.data_sampler.set_epoch(epoch)
            self.dataset.set_epoch(epoch)
            for clean in loader:
                t0 = time.perf_counter()
                row = self.train_step(clean.to(self.device))
                row["epoch"] = epoch
                row["sec_per_step"] = time.perf_counter() - t0
                self.history.append(row)
                steps_done += 1
                bar.update(1)
                bar.set_postfix(adv=f"{row['adv_protected'] or row['adv_preprocessed']:.4f}", d=f"{row['d_loss']:.3f}")
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    self._log(row)
                if self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if validate and self.step % cfg.val_every == 0:
                    self.validate()
                out_of_time = time_limit_s is not None and time.perf_counter() - start >= time_limit_s
                if out_of_time or self.step >= self.total_steps or (stop_after is not None and steps_done >= stop_after):
                    break
            if out_of_time or (stop_after is not None and steps_done >= stop_after):
                break
        bar.close()
        summary = {"steps": self.step, "seconds": time.perf_counter() - start,
                   "finished": self.step >= self.total_steps or out_of_time}
        if summary["finished"]:
            summary["export"] = str(self.export()) if self.acc.is_main_process else None
            if validate and self.step % cfg.val_every:
                summary["validation"] = self.validate()
            summary["in_sync"] = self.check_in_sync()
        self.acc.wait_for_everyone()
        if self._writer is not None:
            self._writer.close()
        return summary

    def check_in_sync(self) -> bool:
        """True when every process holds the same generator weights (gradients were synchronised)."""
        flat = torch.cat([p.detach().float().flatten() for p in self.unwrapped_generator().parameters()])
        fingerprint = torch.stack([flat.sum(), flat.abs().sum(), (flat * torch.arange(flat.numel(),
                                   device=flat.device).remainder(97)).sum()])
        gathered = self.acc.gather(fingerprint[None]).cpu()
        same = bool(torch.allclose(gathered, gathered[:1].expand_as(gathered), rtol=0, atol=0))
        if self.acc.num_processes > 1 and self.acc.is_main_process:
            log.info("generator parameters identical on %d processes: %s", self.acc.num_processes, same)
            print(f"in_sync={same} processes={self.acc.num_processes}", flush=True)
        return same

    def export(self) -> Path:
        cfg = self.cfg
        info = GeneratorInfo(ngf=cfg.ngf, budget=cfg.budget, working_resolution=cfg.resolution,
                             demo=bool(getattr(self.surrogate, "is_demo", False)),
                             provenance=f"gapdiff train run {self.run_id} (config {ckpt.config_hash(cfg.to_dict())}), "
                                        f"{self.step} steps, seed {cfg.seed}",
                             surrogate=str(getattr(self.surrogate, "name", cfg.surrogate)),
                             training_config=cfg.to_dict())
        return save_generator(self.unwrapped_generator(), self.out / cfg.export_name, info)


def _json_random_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _random_state_from_json(data: list) -> tuple:
    return data[0], tuple(data[1]), data[2]


def train(cfg: TrainConfig, resume: Optional[str] = None, overwrite: bool = False, surrogate=None) -> dict:
    """Build a :class:`Trainer` and run it; returns the run summary."""
    return Trainer(cfg, surrogate=surrogate).run(resume=resume, overwrite=overwrite)
