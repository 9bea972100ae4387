"""SAM's promptable-segmentation training loop for any ``Sam`` model.

One step = one image (or augmentation variant) and up to ``masks_per_image`` of its masks.
The image is embedded once; each mask then goes through the simulated interactive session of
:mod:`composer.training.prompts` (first a point or a jittered box, then corrective points with
the previous low-res logits as mask prompt, and the no-point rounds). Every round's loss
(:func:`composer.training.losses.promptable_loss`) is averaged and back-propagated once;
the mask prompt fed to the next round is detached, as in SAM.

The image encoder may be trained, frozen, or partly frozen (``TrainConfig.freeze`` holds
parameter-name prefixes). Samples that carry cached backbone ``features`` are embedded through
``image_encoder.forward_neck`` (see :mod:`composer.training.features`); samples that carry an
``image`` run the whole encoder.

Checkpoints (model, optimizer, step, elapsed time, RNG state, and a digest of all of it) are
written atomically every ``checkpoint_every`` steps and at the end; :meth:`Trainer.resume`
checks the digest and restores all of it, so a
resumed run continues exactly where the saved one stood (the file and its checks:
:mod:`composer.training.checkpoint`). ``embed_sample`` and ``decode_prompts`` are
:mod:`composer.training.forward`'s, re-exported here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import (
    checkpoint_file,
    load_training_state,
    resume_training,
    save_training_state,
    training_state,
)
from .data import PreparedSample, masks_of
from .forward import decode_prompts, embed_sample
from .losses import LossWeights, promptable_loss
from .prompts import (
    corrective_points,
    jitter_box,
    mask_box,
    round_plan,
    sample_in_region,
    sample_near_centre,
    to_input_frame,
)

logger = logging.getLogger(__name__)


#: the stop signals held while a step's weights change (those the platform has)
_HELD_SIGNALS = tuple(
    sig for sig in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP"))
    if sig is not None
)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold the stop signals that a Python handler answers (Ctrl-C's KeyboardInterrupt, the
    CLI's SIGTERM and SIGHUP) while the block runs, and deliver the first one, to the handler
    it was meant for, once the block has ended without an error. Off the main thread, where
    no handler can be set, the block runs as it is.

    The handlers are put back on every path: also when a signal's own handler raises while
    they are being swapped (``signal.signal`` first runs the handlers of signals already
    received), which left a swapped one holding every later Ctrl-C of the process unanswered.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[tuple[int, Any]] = []

    def hold(signum: int, frame: Any) -> None:
        held.append((signum, frame))

    previous: dict[int, Any] = {}
    try:
        for sig in _HELD_SIGNALS:
            handler = signal.getsignal(sig)
            if callable(handler):
                previous[sig] = signal.signal(sig, hold)
        yield
    finally:
        _restore_handlers(previous)
    if held:
        signum, frame = held[0]
        previous[signum](signum, frame)


def _restore_handlers(previous: dict[int, Any]) -> None:
    """Put back every handler of ``previous`` (signal -> handler), then raise what a handler
    raised meanwhile: ``signal.signal`` runs the handlers of signals already received before
    it sets one, so a Ctrl-C answered while the first is put back must not leave the others
    holding."""
    raised: BaseException | None = None
    for sig, handler in previous.items():
        for _ in range(10):  # again after a handler raised (the one put back was not set)
            try:
                signal.signal(sig, handler)
                break
            except BaseException as exc:  # e.g. KeyboardInterrupt: raised once all are back
                raised = raised or exc
    if raised is not None:
        raise raised


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :class:`Trainer` (defaults follow the SAM paper where it gives them).

    Attributes:
        steps: optimizer steps (one image each).
        time_budget_s: optional wall-clock budget of the step loop; the learning-rate schedule
            runs on ``max(step / steps, elapsed / budget)`` and training stops at either end.
        masks_per_image: masks sampled per step (SAM: up to 64).
        num_corrective: rounds that add a corrective point (SAM: 8).
        no_point_rounds: rounds without a new point (SAM: 2, one random, one last).
        first_round_weight: loss weight of the first round (the point or box alone) relative
            to each later round; the rounds' losses are averaged with these weights. SAM: 1
            (a plain mean). With many rounds a plain mean leaves the first prompt a small share
            of the loss (1/11 with SAM's schedule), and single-click quality drifts.
        box_prob: probability that a mask's first prompt is a box instead of a point.
        centre_point_prob: chance that a first point is drawn near the middle of the mask
            (:func:`~composer.training.prompts.sample_near_centre`, at least 0.7 of the largest
            distance from its boundary) instead of uniformly over it (SAM: 0).
        box_noise_frac: box noise std as a fraction of the side (SAM: 0.1).
        box_noise_max_px: largest box noise in input pixels (SAM: 20).
        lr: peak AdamW learning rate (SAM: 8e-4).
        min_lr_frac: final learning rate as a fraction of ``lr`` (cosine decay).
        weight_decay: AdamW weight decay (SAM: 0.1).
        warmup_steps: linear warm-up steps (SAM: 250).
        warmup_fraction: the warm-up also ends once :meth:`Trainer.progress` reaches this
            share of the run (0 = by ``warmup_steps`` alone). With a time budget the number
            of steps is not known in advance; without it a slow model may spend the whole
            budget warming up (``sam-composer train`` uses 0.1).
        grad_clip: max gradient norm (0 disables clipping).
        loss: loss term weights.
        warmup_sample_steps: the first steps draw from the trainer's ``warmup_samples`` (e.g.
            synthetic shapes, where click -> region is easy to learn) instead of ``samples``.
        warmup_sample_prob: after those steps, the chance that a step still draws from
            ``warmup_samples`` (keeps the localisation skill alive on hard natural data).
        focal_warmup_steps: the focal weight is 0 for the first half of these steps, then ramps
            linearly to ``loss.focal``. From scratch, a 20x focal term drives the decoder into
            predicting background everywhere before it learns to localise the click (a plateau
            it leaves only after many steps); dice alone first avoids it.
        multimask_prob: chance that a point-prompted first round uses the three ambiguity
            outputs (SAM: always). Below 1 the single output is trained on single clicks too.
        multimask_warmup_steps: before this step no round uses the three outputs. From
            scratch, SAM's best-of-3 loss lets the outputs become fixed "object slots" (the
            image's 3 most salient regions) that ignore where the click is, a local minimum
            the decoder does not leave; the single output cannot cheat that way and learns to
            localise the click first (measured: on synthetic shapes, mIoU of a centre click
            stayed ~0.47 with best-of-3 from step 0, while single-output training localised
            within ~2500 steps).
        feedback_oracle_prob: chance, per mask and round, that the mask carried to the next
            round (as mask prompt and for the corrective click) is the output with the highest
            true IoU instead of the highest predicted IoU (SAM). Inference may rank outputs by
            more than the predicted IoU (composer_tiny's contrast ranking often picks the whole
            object its head rates low), so the decoder must also learn to correct those masks.
        freeze: parameter-name prefixes that are not trained.
        batchnorm_stats: BatchNorm layers that are trained run in training mode (batch
            statistics, running statistics updated). Off (default): they stay in eval mode
            and only their affine weights train (as torchvision's frozen BatchNorm). A step
            holds one image, so batch statistics are one image's and the features differ
            from inference's (a short fine-tune of composer_tiny's whole encoder started
            from twice the loss with them). Wholly frozen modules are in eval mode either way.
        amp: mixed precision; None = on for CUDA (float16 + grad scaling), off on CPU;
            True on the CPU autocasts to bfloat16 (no grad scaling).
        checkpoint_dir: where ``last.pt`` goes (None disables checkpoints).
        checkpoint_every: steps between checkpoints.
        seed: seed of the sampling RNG.

    Numpy scalars (``np.float32(1e-3)``) are kept as the Python numbers they hold.

    Raises:
        ValueError: a value out of its range (e.g. ``steps`` < 1, ``lr`` not a positive
            number, ``time_budget_s`` not positive, a probability outside [0, 1], ``seed`` < 0).
    """

    steps: int = 1000
    time_budget_s: float | None = None
    masks_per_image: int = 16
    num_corrective: int = 8
    no_point_rounds: int = 2
    first_round_weight: float = 1.0
    box_prob: float = 0.5
    centre_point_prob: float = 0.0
    box_noise_frac: float = 0.1
    box_noise_max_px: float = 20.0
    lr: float = 8e-4
    min_lr_frac: float = 0.05
    weight_decay: float = 0.1
    warmup_steps: int = 250
    warmup_fraction: float = 0.0
    grad_clip: float = 1.0
    loss: LossWeights = field(default_factory=LossWeights)
    focal_warmup_steps: int = 0
    warmup_sample_steps: int = 0
    warmup_sample_prob: float = 0.0
    multimask_prob: float = 1.0
    multimask_warmup_steps: int = 0
    feedback_oracle_prob: float = 0.0
    freeze: tuple[str, ...] = ("image_encoder",)
    batchnorm_stats: bool = False
    amp: bool | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        # numpy scalars (a sweep's np.float32 lr) as Python numbers: they reach the training
        # state (history, optimizer groups), whose digest and weights_only load refuse them
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.generic):
                object.__setattr__(self, f.name, value.item())
        if self.steps < 1 or self.masks_per_image < 1:
            raise ValueError(
                f"steps and masks_per_image must be >= 1, got {self.steps}, {self.masks_per_image}"
            )
        if not 0.0 <= self.box_prob <= 1.0:
            raise ValueError(f"box_prob must be in [0, 1], got {self.box_prob}")
        if not 0.0 <= self.centre_point_prob <= 1.0:
            raise ValueError(f"centre_point_prob must be in [0, 1], got {self.centre_point_prob}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:  # NaN too
            raise ValueError(f"time_budget_s must be positive, got {self.time_budget_s}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 0.0 <= self.multimask_prob <= 1.0:
            raise ValueError(f"multimask_prob must be in [0, 1], got {self.multimask_prob}")
        if not self.first_round_weight > 0:
            raise ValueError(f"first_round_weight must be positive, got {self.first_round_weight}")
        if not 0.0 <= self.feedback_oracle_prob <= 1.0:
            raise ValueError(
                f"feedback_oracle_prob must be in [0, 1], got {self.feedback_oracle_prob}"
            )
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1], got {self.warmup_fraction}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")


@dataclass
class StepStats:
    """What one step reports: losses and the first round's IoUs."""

    loss: float
    mask_loss: float
    iou_loss: float
    first_iou: float  # mean IoU of the first round's selected masks (point prompts and boxes)
    lr: float
    seconds: float


def _grad_scaler(enabled: bool) -> Any:
    """CUDA's loss scaler for float16 autocast: ``torch.amp.GradScaler("cuda")`` (torch 2.3 and
    newer), or ``torch.cuda.amp.GradScaler`` on the older releases the package admits (2.1, 2.2);
    the two keep the same state dict."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # pragma: no cover - torch < 2.3


class Trainer:
    """Trains ``model`` on ``samples`` (see module docstring).

    Args:
        model: a ``Sam`` (official attribute names).
        config: hyper-parameters.
        samples: a sequence of :class:`~composer.training.data.PreparedSample` (in memory, or a
            lazy dataset with ``__len__``/``__getitem__``); each needs ``masks_index``.
        warmup_samples: samples for the first ``config.warmup_sample_steps`` steps.
    """

    def __init__(
        self,
        model: Any,
        config: TrainConfig,
        samples: Sequence[PreparedSample],
        warmup_samples: Sequence[PreparedSample] | None = None,
    ) -> None:
        if len(samples) == 0:
            raise ValueError("no training samples")
        if config.warmup_sample_steps and not warmup_samples:
            raise ValueError("warmup_sample_steps > 0 needs warmup_samples")
        self.warmup_samples = warmup_samples
        self.model = model
        self.config = config
        self.samples = samples
        self.device = next(model.parameters()).device
        self.img_size = int(model.image_encoder.img_size)
        self.low_res = int(model.prompt_encoder.mask_input_size[0])
        for name, p in model.named_parameters():
            p.requires_grad_(not name.startswith(config.freeze))
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(f"freeze={config.freeze} leaves nothing to train")
        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=config.lr,
        )
        use_amp = config.amp if config.amp is not None else self.device.type == "cuda"
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.amp = bool(use_amp)
        self.scaler = _grad_scaler(enabled=self.amp and self.device.type == "cuda")
        self.rng = np.random.default_rng(config.seed)
        self.step = 0
        self._updating = False  # inside the weight update of a step (see fit)
        self._step_rng: tuple[Any, torch.Tensor] | None = None  # RNG states as the step began
        self.elapsed = 0.0
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ schedule
    def progress(self) -> float:
        """Fraction of training done: by steps, or by the time budget if that is further."""
        p = self.step / self.config.steps
        if self.config.time_budget_s:
            p = max(p, self.elapsed / self.config.time_budget_s)
        return min(p, 1.0)

    def lr_now(self) -> float:
        c = self.config
        by_progress = c.warmup_fraction > 0 and self.progress() >= c.warmup_fraction
        if self.step < c.warmup_steps and not by_progress:
            ramp = (self.step + 1) / c.warmup_steps
            if c.warmup_fraction > 0:
                ramp = max(ramp, self.progress() / c.warmup_fraction)
            return c.lr * min(ramp, 1.0)
        cos = 0.5 * (1 + math.cos(math.pi * self.progress()))
        return c.lr * (c.min_lr_frac + (1 - c.min_lr_frac) * cos)

    def done(self) -> bool:
        return self.progress() >= 1.0

    # ------------------------------------------------------------------ model pieces
    def _set_train_mode(self) -> None:
        self.model.train()
        # Wholly frozen sub-modules (e.g. a backbone with BatchNorm) stay in eval mode, and
        # so do trained BatchNorm layers unless asked (see TrainConfig.batchnorm_stats).
        for module in self.model.modules():
            params = list(module.parameters(recurse=True))
            if params and not any(p.requires_grad for p in params):
                module.eval()
            elif not self.config.batchnorm_stats and isinstance(
                module, torch.nn.modules.batchnorm._BatchNorm
            ):
                module.eval()

    def embed(self, sample: PreparedSample) -> torch.Tensor:
        """(1, C, g, g) image embedding of a sample (cached backbone features or the image)."""
        return embed_sample(self.model, sample)

    def decode(
        self,
        emb: torch.Tensor,
        coords: np.ndarray | None,
        labels: np.ndarray | None,
        boxes: np.ndarray | None,
        mask_in: torch.Tensor | None,
        multimask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """See :func:`decode_prompts`."""
        return decode_prompts(self.model, emb, coords, labels, boxes, mask_in, multimask)

    # ------------------------------------------------------------------ one step
    def _first_prompts(
        self, gt: np.ndarray, valid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """is_box (M,), first point (M, 2) input-frame, boxes (M, 4) input-frame."""
        c, rng, m = self.config, self.rng, len(gt)
        is_box = rng.random(m) < c.box_prob
        points = np.zeros((m, 2))
        boxes = np.zeros((m, 4))
        scale = self.img_size / self.low_res
        for i in range(m):
            if is_box[i]:
                boxes[i] = jitter_box(
                    mask_box(gt[i]) * scale,
                    rng,
                    c.box_noise_frac,
                    c.box_noise_max_px,
                    bounds=(self.img_size, self.img_size),
                )
            else:
                if c.centre_point_prob and rng.random() < c.centre_point_prob:
                    p = sample_near_centre(gt[i] & valid, rng)
                else:
                    p = sample_in_region(gt[i] & valid, rng)
                points[i] = to_input_frame(np.asarray(p), self.low_res, self.img_size)
        return is_box, points, boxes

    def train_step(self) -> StepStats:
        """Run one optimizer step and return its statistics.

        Raises:
            ValueError: the drawn sample has no mask to train on, or (without fp16 gradient
                scaling, which skips such steps itself) the loss or the gradient norm is NaN
                or infinite; the weights are then left as the previous step left them.
        """
        c, rng = self.config, self.rng
        t0 = time.perf_counter()
        self._step_rng = (rng.bit_generator.state, torch.get_rng_state())
        pool = self.samples
        if self.warmup_samples and (
            self.step < c.warmup_sample_steps or rng.random() < c.warmup_sample_prob
        ):
            pool = self.warmup_samples
        sample = pool[int(rng.integers(len(pool)))]
        idx = sample.masks_index
        if len(idx) == 0:
            raise ValueError(f"sample {sample.image_id} has no mask to train on (empty masks_index)")
        pick = rng.choice(len(idx), size=min(c.masks_per_image, len(idx)), replace=False)
        gt_np = masks_of(sample, idx[np.sort(pick)])
        valid_np = sample.valid
        gt_np &= valid_np
        keep = gt_np.reshape(len(gt_np), -1).any(1)
        gt_np = gt_np[keep]
        gt = torch.from_numpy(gt_np).to(self.device)
        weights = torch.from_numpy(valid_np).to(self.device)
        is_box, first_pts, boxes = self._first_prompts(gt_np, valid_np)
        plan = round_plan(c.num_corrective, c.no_point_rounds, rng)
        use_multimask = self.step >= c.multimask_warmup_steps and bool(
            rng.random() < c.multimask_prob
        )
        groups = [g for g in (np.flatnonzero(~is_box), np.flatnonzero(is_box)) if len(g)]
        # Per-mask click lists (input frame); a box group starts without points.
        coords = [
            first_pts[g][:, None] if not is_box[g[0]] else np.zeros((len(g), 0, 2)) for g in groups
        ]
        labels = [
            np.ones((len(g), 1), np.int64) if not is_box[g[0]] else np.zeros((len(g), 0), np.int64)
            for g in groups
        ]
        mask_in: list[torch.Tensor | None] = [None] * len(groups)

        self._set_train_mode()
        lr = self.lr_now()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        device_type = self.device.type
        loss_w = c.loss
        if c.focal_warmup_steps > 0 and self.step < c.focal_warmup_steps:
            half = c.focal_warmup_steps / 2
            ramp = max(0.0, (self.step - half) / half)
            loss_w = replace(c.loss, focal=c.loss.focal * ramp)
        total = torch.zeros((), device=self.device)
        mask_l = iou_l = 0.0
        first_iou: list[torch.Tensor] = []
        n_rounds = 1 + len(plan)
        w_first = c.first_round_weight
        round_w = [w_first / (w_first + n_rounds - 1)] + [1 / (w_first + n_rounds - 1)] * (
            n_rounds - 1
        )
        with torch.autocast(device_type, dtype=self.amp_dtype, enabled=self.amp):
            emb = self.embed(sample)
            for r in range(n_rounds):
                for gi, g in enumerate(groups):
                    box_group = bool(is_box[g[0]])
                    multimask = r == 0 and not box_group and use_multimask
                    logits, iou_pred = self.decode(
                        emb,
                        coords[gi],
                        labels[gi],
                        boxes[g] if box_group else None,
                        mask_in[gi],
                        multimask,
                    )
                    out = promptable_loss(logits, iou_pred, gt[g], weights, loss_w)
                    share = round_w[r] * len(g) / len(gt_np)
                    total = total + out.total * share
                    mask_l += float(out.mask) * share
                    iou_l += float(out.iou) * share
                    # The mask carried forward is the one with the highest predicted IoU
                    # (or, at feedback_oracle_prob, the truly best one).
                    sel = iou_pred.detach().float().argmax(1)
                    rows = torch.arange(len(g), device=self.device)
                    if r == 0:
                        first_iou.append(out.true_iou[rows, sel])
                    if c.feedback_oracle_prob > 0 and logits.shape[1] > 1:
                        swap = torch.from_numpy(rng.random(len(g)) < c.feedback_oracle_prob)
                        best = out.true_iou.detach().float().argmax(1)
                        sel = torch.where(swap.to(sel.device), best, sel)
                    chosen = logits.detach()[rows, sel].float()
                    if r + 1 < n_rounds:
                        mask_in[gi] = chosen[:, None]
                        if plan[r]:
                            pred = (chosen > 0).cpu().numpy()
                            xy, lab = corrective_points(pred, gt_np[g], valid_np, rng)
                            xy = to_input_frame(xy, self.low_res, self.img_size)
                            coords[gi] = np.concatenate([coords[gi], xy[:, None]], 1)
                            labels[gi] = np.concatenate([labels[gi], lab[:, None]], 1)
        # With fp16 grad scaling a non-finite step is skipped by the scaler; otherwise it would
        # turn every weight into NaN, so it stops training before the update.
        check = not self.scaler.is_enabled()
        if check and not torch.isfinite(total.detach()):
            raise ValueError(
                f"step {self.step + 1}: loss is {float(total.detach())} on sample {sample.image_id} "
                f"(lr {lr:.2e}); stopped before the update (lower the learning rate?)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if c.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
            if check and not torch.isfinite(norm):
                raise ValueError(
                    f"step {self.step + 1}: gradient norm is {float(norm)} on sample "
                    f"{sample.image_id} (lr {lr:.2e}); stopped before the update"
                )
        # Ctrl-C (or the CLI's SIGTERM) while the weights change is held until the step is
        # whole, then raised: fit checkpoints the finished step (it struck here in ~1 of 10
        # Ctrl-C of a frozen-encoder run, and the run lost every step since the last
        # checkpoint, up to checkpoint_every)
        with _signals_held():
            self._updating = True  # weights, step and history change together
            self.scaler.step(self.optimizer)
            self.scaler.update()
            dt = time.perf_counter() - t0
            self.step += 1
            self.elapsed += dt
            stats = StepStats(
                float(total.detach()), mask_l, iou_l, float(torch.cat(first_iou).mean()), lr, dt
            )
            self.history.append(asdict(stats))
            self._step_rng = None  # before _updating: no moment counts a finished step as cut short
            self._updating = False
        return stats

    # ------------------------------------------------------------------ loop
    def fit(
        self, progress: bool = False, on_step: Callable[[Trainer, StepStats], None] | None = None
    ) -> list[dict[str, float]]:
        """Train until ``config.steps`` or the time budget; checkpoint along the way.

        Ctrl-C or an error between or inside steps writes a checkpoint of the finished steps
        (not when the weights are no longer finite, or when an error struck during the weight
        update: the last checkpoint then stands) and re-raises. A Ctrl-C (or SIGTERM/SIGHUP
        with a Python handler, as the CLI sets) during the weight update, in the main thread,
        is held until the step is whole and then raised, so that step is checkpointed too.

        Args:
            progress: show a tqdm bar with running loss and first-round mIoU (CLI/recipes).
            on_step: optional callback after every step (e.g. validation, logging).

        Returns:
            The per-step history (dicts of :class:`StepStats` fields) of the whole run.

        Raises:
            ValueError: see :meth:`train_step` (e.g. a NaN loss).
        """
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=self.config.steps, initial=self.step, desc="train", unit="step")
        # Running means shown by the bar and the log: an exponential average from zero divided
        # by its weight so far (as Adam's), so each step of a short run counts alike instead
        # of the first step weighing 0.95 ** (n - 1).
        avg_loss = avg_iou = weight = 0.0
        self._updating = False
        self._step_rng = None
        try:
            while not self.done():
                s = self.train_step()
                avg_loss = 0.95 * avg_loss + 0.05 * s.loss
                avg_iou = 0.95 * avg_iou + 0.05 * s.first_iou
                weight = 0.95 * weight + 0.05
                ema_loss, ema_iou = avg_loss / weight, avg_iou / weight
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{ema_loss:.3f}", mIoU=f"{ema_iou:.3f}", lr=f"{s.lr:.1e}")
                if self.step % 20 == 0:
                    logger.info(
                        "step %d loss %.4f (mask %.4f iou %.4f) first-round mIoU %.3f lr %.2e %.2fs/step",
                        self.step,
                        ema_loss,
                        s.mask_loss,
                        s.iou_loss,
                        ema_iou,
                        s.lr,
                        s.seconds,
                    )
                if on_step is not None:
                    on_step(self, s)
                if self.config.checkpoint_dir and self.step % self.config.checkpoint_every == 0:
                    self.save_checkpoint()
        except (KeyboardInterrupt, Exception) as exc:
            # Ctrl-C or an error: keep the finished steps for a rerun, unless it struck while
            # the optimizer was updating the weights or the weights are no longer finite (then
            # the last checkpoint stands). A step cut short is forgotten: the sampling state
            # goes back to where it began, so the resumed run redoes it and matches an
            # uninterrupted one.
            if self._step_rng is not None and not self._updating:
                self.rng.bit_generator.state, torch_state = self._step_rng
                torch.set_rng_state(torch_state)
                self._step_rng = None
            if (
                self.config.checkpoint_dir
                and self.step > 0
                and not self._updating
                and all(bool(torch.isfinite(p).all()) for p in self.model.parameters())
            ):
                if bar is not None:
                    # ends the bar's line first: the warning below was appended to it
                    # ("train: 38%|...| 77/200 [...]WARNING ...: interrupted: ...")
                    bar.close()
                what = "interrupted" if isinstance(exc, KeyboardInterrupt) else "stopped by an error"
                try:
                    self.save_checkpoint()
                except Exception as save_exc:  # e.g. the error was writing a checkpoint
                    logger.warning("%s; no checkpoint written (%s)", what, save_exc)
                else:
                    logger.warning("%s: checkpoint at step %d, a rerun resumes", what, self.step)
            raise
        finally:
            if bar is not None:
                bar.close()
        if self.config.checkpoint_dir:
            self.save_checkpoint()
        return self.history

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_path(self) -> Path:
        """``checkpoint_dir/last.pt`` (ValueError without a ``checkpoint_dir``)."""
        return checkpoint_file(self.config.checkpoint_dir)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue: model, optimizer, scaler, step, time, RNG states."""
        return training_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (a :meth:`state_dict`); ValueError if it does not fit this
        model and these trained parameters, the trainer then left as it was (see
        :func:`~composer.training.checkpoint.load_training_state`)."""
        load_training_state(self, state)

    def save_checkpoint(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the training state with its SHA-256 digest, atomically (``*.part``, fsync,
        rename: a crash mid-write leaves the previous file as it was); returns the path."""
        out = Path(path) if path is not None else self.checkpoint_path()
        save_training_state(self.state_dict(), out)
        logger.info("checkpoint at step %d -> %s", self.step, out)
        return out

    def resume(self, path: str | os.PathLike[str] | None = None) -> bool:
        """Load a checkpoint (default ``checkpoint_dir/last.pt``) if it exists; True if loaded.

        A file that cannot be used is never deleted or written, and leaves the trainer as it
        was; each error names the file and what to do.

        Raises:
            ValueError: the path is not a file; the file is damaged (its content does not
                match its digest, or torch cannot load it), cut off or empty; or it
                is not a training state of this model and these trained parameters (model
                weights alone, another architecture, another ``TrainConfig.freeze``).
            OSError: the file cannot be read (no permission, a failing disk).
        """
        file = Path(path) if path is not None else self.checkpoint_path()
        if not resume_training(self, file):
            return False
        logger.info("resumed from %s at step %d (%.0f s trained)", file, self.step, self.elapsed)
        return True
