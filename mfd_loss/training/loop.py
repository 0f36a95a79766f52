"""Training a feature map by self-supervised perturbation-parameter regression (METHOD.md Sec. 3).

Objective: mean squared error between the map's K outputs and the label vector of random perturbations
applied to real images; RAdam, no weight decay, BatchNorm in train mode; each op switched on per sample
with probability p, ramped linearly from 0 to ``p_max`` over the first ``ramp_fraction`` of the run (paper:
0.15 over 50k of 400k iterations = 1/8, batch 512, lr 1e-4; :data:`RECIPES` ``"paper"``).

Resume is exact: the data order of each epoch and the perturbations of each step are derived from
(seed, epoch) and (seed, step), and the checkpoint holds the model, the optimiser, the loss scaler and
the step, so a run stopped at a checkpoint and resumed gives bit-identical weights to one that never
stopped. Under ``torchrun`` every process draws the same global batch and perturbations, keeps its own
slice for the forward/backward pass, and BatchNorm statistics span the global batch, so K processes
reproduce one process with the same global batch (up to float summation order). The checkpoint also
holds a fingerprint of the training data (:func:`data_fingerprint`), so resuming on other data is refused.

:func:`train_feature_map` reads top to bottom: ``_plan_run`` (open and check the data, spec and architecture),
``_start_run`` (model, optimiser, scaler; a resume is checked by ``_check_resumable``), ``_train_steps`` (one
``_optimizer_step`` per batch, ``log.csv`` / ``eval.csv`` through :mod:`mfd_loss.training.logs`, checkpoints),
then :func:`~mfd_loss.training.export.export_run`.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from contextlib import closing, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..feature_maps import FeatureMapConfig, TapFeatureMap, build_feature_map
from ..perturbations import LabelSpec, Perturbations, label_spec
from .checkpoint import load_checkpoint, save_checkpoint
from .config import CHECKPOINT_NAME, MIN_PERTURBED_PER_OP, TrainConfig, _checkpoint_ramp_length, default_device, default_spec
from .data import StepBatchSampler, _describe_source, _generator, _mix, _prepare_data, data_fingerprint
from .datasets import to_model_range
from .distributed import init_distributed, max_over_processes, use_global_batchnorm
from .export import export_run
from .image_sources import collate_images, describe_image
from .interrupt import StopRequested, stop_reason
from .logs import _Logs, check_writable, warnings_above
from .reporting import check_report_to, make_reporter

__all__ = ["train_feature_map"]


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _fit_architecture(base: FeatureMapConfig, channels: int, num_labels: int, size: tuple[int, int]) -> FeatureMapConfig:
    """The base architecture for this data: its stage count when the size allows it, else as many as fit."""
    fields = {**base.to_dict(), "num_labels": num_labels, "in_channels": channels, "resolution": size}
    try:
        return FeatureMapConfig(**fields)
    except ValueError:
        return FeatureMapConfig(**{**fields, "num_stages": None})


def train_feature_map(
    data: Any,
    out_dir: str | os.PathLike,
    *,
    config: TrainConfig = TrainConfig(),
    architecture: FeatureMapConfig | None = None,
    eval_data: Any = None,
    input_range: tuple[float, float] | None = None,
    resume: bool = True,
    max_minutes: float | None = None,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    dataset: dict[str, Any] | None = None,
    export_dtype: torch.dtype = torch.float32,
    progress: bool = True,
    source_kwargs: dict[str, Any] | None = None,
    report_to: str = "none",
) -> tuple[TapFeatureMap, dict[str, Any]]:
    """Train (or resume training) a feature map, then export it.

    Run single-process, or the same code under ``torchrun --nproc-per-node K`` (DDP; gloo on CPU, NCCL on
    CUDA). Writes into out_dir (rank 0 only): ``checkpoint.pt`` (atomically, every ``checkpoint_every``
    steps, on SIGTERM/SIGINT, at ``max_minutes`` and at the end), ``log.csv`` (step, loss, p, images/s; a row
    every 30 s, at each checkpoint and when stopping),
    ``eval.csv`` (per-label R^2 of each evaluation) and, when ``config.steps`` is reached, the exported map
    (``model.safetensors`` + ``config.json``, loadable with ``MFD(pretrained=out_dir)``).

    Args:
        data: training images: ``"cifar10"`` / ``"mnist"`` (project archives), ``"torchvision:NAME"``, a folder
            of images, a ``.npy``/``.npz`` file, an (N, C, H, W) tensor/array, or any ``Dataset`` of images
            (see :func:`mfd_loss.training.image_sources.open_image_source`). Channels 1, 3 or more; any size >= the
            architecture's minimum; all images one size.
        out_dir: run folder.
        config: the recipe (see :class:`TrainConfig`).
        architecture: feature-map family and width; ``in_channels``, ``num_labels`` and ``resolution`` are
            taken from the data and the spec. Default: VGG16-BN at full width.
        eval_data: held-out images (same forms as ``data``; named sets use their test split); default: a
            ``config.eval_fraction`` share of ``data`` is held out.
        input_range: value range of float data, e.g. (0, 1); uint8 data is [0, 255]. Checked on every batch.
        resume: continue from out_dir/checkpoint.pt when it exists (the recipe must match, except ``steps``, and
            the data must be the same: see :func:`data_fingerprint`). The ramp keeps the length it had when the
            run started, in steps, whatever ``steps`` becomes.
        max_minutes: stop (with a checkpoint) after this much wall-clock time; rerun to resume.
        device: where to train (``"cpu"``, ``"cuda"``; under torchrun each process takes ``cuda:LOCAL_RANK``);
            default: :func:`default_device` (CUDA when available).
        num_workers: DataLoader worker processes (useful for image folders).
        dataset: description stored in ``config.json`` (name, split, size, ...).
        export_dtype: storage dtype of the exported weights.
        progress: show a tqdm bar (rank 0).
        source_kwargs: extra arguments of ``open_image_source`` (``root``, ``download``, ``channels``, ``size``, ...).
        report_to: ``"none"``, ``"tensorboard"`` (event file in ``out_dir/tensorboard``) or ``"wandb"`` (run files
            in ``out_dir/wandb``): rank 0 reports the loss, learning rate, p and images/s at each log row, the
            held-out MSE and per-label R^2 at each evaluation, and a grid of 16 perturbed training inputs (see
            :mod:`mfd_loss.training.reporting`). The CSV logs are written either way.

    Returns:
        (feature map on ``device``, summary with ``step``, ``finished``, ``stopped_by`` (None, ``"SIGINT"``,
        ``"SIGTERM"`` or ``"max_minutes"``), ``images_seen``, ``train_seconds``, ``metrics``).

    Raises:
        ValueError: empty or mixed-size data, NaN/Inf in an image (naming it; raised at the first batch holding it,
            after the checkpoints of the steps before), values outside ``input_range``, CUDA asked for but not
            available, an unknown ``report_to``,
            a spec that needs RGB for
            non-RGB data, a batch size not divisible by the number of processes, fewer than 2 held-out images,
            or a checkpoint written with a different recipe/architecture or on different data.

    Warns:
        UserWarning: the held-out set is too small for per-label R^2 (fewer than 10 images expected with each
            perturbation on), or an evaluation found labels with undefined R^2.
    """
    device = torch.device(default_device() if device is None else device)
    check_report_to(report_to)  # an unknown name or a missing library fails before any work
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch.cuda.is_available() is False (no GPU, or a CPU-only "
                         "torch build); use device='cpu' (--device cpu) or install a CUDA build of torch")
    ctx = init_distributed(device)
    out_dir = Path(out_dir)
    if ctx.is_main:
        check_writable(out_dir)  # before the data is loaded (minutes for a large folder)
    plan = _plan_run(data, eval_data, config, architecture, input_range, ctx.world_size, source_kwargs or {})
    if getattr(plan.source, "inferred", None) and ctx.is_main:
        tqdm.write(f"{_describe_source(data)}: {plan.source.inferred}", file=sys.stderr)
    run = _start_run(plan, config, ctx, out_dir / CHECKPOINT_NAME, resume)
    description = {"source": plan.fingerprint["source"], **(dataset or {}), "num_images": len(plan.train_idx),
                   "channels": plan.channels, "resolution": [plan.height, plan.width],
                   "input_range": list(input_range) if input_range else "uint8 [0, 255]"}
    reporter = make_reporter(report_to if ctx.is_main else "none", out_dir / _REPORT_DIRS[report_to],
                             config={**asdict(config), "architecture": plan.arch.to_dict()}, name=out_dir.name)
    with closing(reporter):
        halt_code = _train_steps(run, plan, config, ctx, out_dir, description, input_range=input_range,
                                 max_minutes=max_minutes, num_workers=num_workers, progress=progress,
                                 reporter=reporter)
    finished = run.step >= config.steps
    stopped_by = None if finished else stop_reason(halt_code)
    summary = {"step": run.step, "finished": finished, "stopped_by": stopped_by,
               "images_seen": run.step * config.batch_size, "train_seconds": round(run.train_seconds, 1),
               "metrics": run.last_eval}
    if ctx.distributed:
        dist.barrier()
    if finished and ctx.is_main:
        export_run(out_dir, out_dir, dtype=export_dtype)
    return run.model.eval(), summary


_REPORT_DIRS = {"none": "", "tensorboard": "tensorboard", "wandb": ""}  # wandb makes its own wandb/ folder


@dataclass
class _Plan:
    """What a run trains on and with: the opened data, the held-out images, the spec and the architecture."""

    source: Dataset
    train_idx: list[int]
    eval_images: Tensor | None
    channels: int
    height: int
    width: int
    fingerprint: dict[str, Any]
    eval_p: float
    spec: LabelSpec
    arch: FeatureMapConfig
    perturbations: Perturbations


def _plan_run(data: Any, eval_data: Any, config: TrainConfig, architecture: FeatureMapConfig | None,
              input_range: tuple[float, float] | None, world_size: int, source_kwargs: dict[str, Any]) -> _Plan:
    """Open the data and check it, the spec and the batch size against each other (before any training)."""
    source, train_idx, eval_images, (channels, height, width) = _prepare_data(
        data, eval_data, config, input_range, **source_kwargs)
    fingerprint = data_fingerprint(source, getattr(source, "description", None) or _describe_source(data))
    eval_p = config.p_max if config.eval_p is None else config.eval_p
    if eval_images is not None:
        if eval_images.shape[0] < 2:
            raise ValueError(f"per-label R^2 needs at least 2 held-out images, got {eval_images.shape[0]}; pass more "
                             "eval_data (--eval-data) or set eval_fraction=0 (--eval-fraction 0) to skip evaluation")
        expected = eval_images.shape[0] * eval_p
        if expected < MIN_PERTURBED_PER_OP:
            # stacklevel 3: this function, train_feature_map, then the caller's line
            warnings.warn(f"the held-out set has {eval_images.shape[0]} images: at p = {eval_p:g} about "
                          f"{expected:.1f} of them have each perturbation on, too few for per-label R^2 (want >= "
                          f"{MIN_PERTURBED_PER_OP}); hold out more (eval_size / eval_fraction, --eval-size / "
                          "--eval-fraction) or pass eval_data (--eval-data)", UserWarning, stacklevel=3)
    spec = label_spec(default_spec(channels) if config.spec == "auto" else config.spec)
    if spec.needs_rgb and channels != 3:
        raise ValueError(f"the perturbation spec {list(spec.ops)} has RGB-only ops (hue, saturation) but the images "
                         f"have {channels} channel(s); use spec='auto' or '{default_spec(channels)}'")
    if "mixup" in spec.ops and config.batch_size < 2:
        raise ValueError("the mixup perturbation needs batch_size >= 2 (its partner is another image of the batch)")
    if config.batch_size % world_size:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {world_size} processes")
    arch = _fit_architecture(architecture or FeatureMapConfig(), channels, spec.num_labels, (height, width))
    if input_range is not None and collate_images([source[train_idx[0]]]).is_floating_point():
        # float data (e.g. latents) was mapped from input_range onto [-1, 1]: record it, MFD applies it at call time
        arch = FeatureMapConfig(**{**arch.to_dict(), "data_range": tuple(input_range)})
    return _Plan(source, train_idx, eval_images, channels, height, width, fingerprint, eval_p, spec, arch,
                 Perturbations(spec, p=config.p_max))


@dataclass
class _Run:
    """The state a checkpoint holds: model, optimiser, loss scaler, step, time, last evaluation, ramp length."""

    model: TapFeatureMap
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ramp_length: int
    step: int = 0
    train_seconds: float = 0.0
    last_eval: dict[str, Any] | None = None


def _start_run(plan: _Plan, config: TrainConfig, ctx: Any, ckpt_path: Path, resume: bool) -> _Run:
    """A fresh model, optimiser and scaler (seeded), loaded from the checkpoint when resuming."""
    torch.manual_seed(_mix(config.seed, 0))
    model = build_feature_map(plan.arch).to(ctx.device).train()
    optimizer = torch.optim.RAdam(model.parameters(), lr=config.lr, weight_decay=0.0)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=config.precision == "fp16")
    # the ramp length is fixed when the run starts: a resume keeps it whatever `steps` becomes
    run = _Run(model, optimizer, scaler, ramp_length=config.ramp_length)
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        run.ramp_length = _check_resumable(state, plan, config, ckpt_path)
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        run.step, run.train_seconds, run.last_eval = state["step"], state["train_seconds"], state.get("last_eval")
    return run


def _check_resumable(state: dict[str, Any], plan: _Plan, config: TrainConfig, ckpt_path: Path) -> int:
    """The checkpoint's ramp length, after checking it was written by the same recipe, pipeline and data.

    Raises:
        ValueError: another architecture or recipe (``steps`` may change), perturbation pipeline or data.
    """
    saved_arch = FeatureMapConfig.from_dict(state["architecture"]).to_dict()
    changed = {"architecture"} if saved_arch != plan.arch.to_dict() else set()
    now = asdict(config)
    ramp_length = _checkpoint_ramp_length(state)
    # a checkpoint without ramp_fraction has an absolute ramp_steps as its only ramp setting: any ramp
    # setting resumes it with that ramp, except another explicit ramp_steps
    absolute = "ramp_fraction" not in state["recipe"]
    kept = {"steps", "ramp_fraction", "ramp_steps"} if absolute else {"steps"}
    changed |= {f"recipe.{k}" for k in now if k not in kept and state["recipe"].get(k, now[k]) != now[k]}
    if absolute and config.ramp_steps is not None and config.ramp_steps != ramp_length:
        changed.add("recipe.ramp_steps")
    if changed:
        values = "; ".join(f"{k}: {state['recipe'].get(k[7:])!r} in the checkpoint, {now[k[7:]]!r} now"
                           for k in sorted(changed) if k.startswith("recipe."))
        raise ValueError(f"{ckpt_path} was written with a different {sorted(changed)}" +
                         (f" ({values})" if values else "") +
                         "; use another out_dir, the original settings, or resume=False to start over")
    saved_pipeline = LabelSpec.from_dict(state["label_spec"]).pipeline
    if saved_pipeline != plan.spec.pipeline:
        raise ValueError(f"{ckpt_path} was trained with perturbation pipeline {saved_pipeline} and this mfd-loss "
                         f"implements pipeline {plan.spec.pipeline} (see docs/how-it-works.md); its labels would change "
                         "meaning mid-run: start a new run in another folder (--out) or over this one (--no-resume)")
    saved, fingerprint = state.get("data_fingerprint"), plan.fingerprint
    if saved and (saved["num_images"], saved["sample_sha256"]) != (fingerprint["num_images"],
                                                                     fingerprint["sample_sha256"]):
        raise ValueError(f"{ckpt_path} is a run on other data: {saved['source']} ({saved['num_images']} images), "
                         f"not {fingerprint['source']} ({fingerprint['num_images']} images, other content); "
                         "resume with the original data (--data), or start a new run in another folder (--out) "
                         "or over this one (resume=False, --no-resume)")
    return ramp_length


def _save(run: _Run, plan: _Plan, config: TrainConfig, path: Path, description: dict[str, Any]) -> None:
    """Write the run's checkpoint (atomically; rank 0 calls this)."""
    save_checkpoint(path, {
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
        "step": run.step, "train_seconds": run.train_seconds, "recipe": asdict(config), "ramp_length": run.ramp_length,
        "architecture": plan.arch.to_dict(),
        "label_spec": plan.spec.to_dict(), "dataset": description, "last_eval": run.last_eval,
        "data_fingerprint": plan.fingerprint,
    })


def _train_steps(run: _Run, plan: _Plan, config: TrainConfig, ctx: Any, out_dir: Path, description: dict[str, Any],
                 *, input_range: tuple[float, float] | None, max_minutes: float | None, num_workers: int,
                 progress: bool, reporter: Any = None) -> int:
    """Train from ``run.step`` until ``config.steps``, a stop signal or ``max_minutes``; log, evaluate and
    checkpoint on the way. Returns the halt code (0: not halted, 1: out of time, else the signal number)."""
    schedule = replace(config, ramp_steps=run.ramp_length)  # the p schedule of this run
    net = run.model
    if ctx.distributed:
        net = torch.nn.parallel.DistributedDataParallel(use_global_batchnorm(run.model, ctx.device),
                                                        device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    shard = slice(ctx.rank * config.batch_size // ctx.world_size, (ctx.rank + 1) * config.batch_size // ctx.world_size)
    sampler = StepBatchSampler(plan.train_idx, config.batch_size, config.seed, run.step, config.steps)
    loader = DataLoader(plan.source, batch_sampler=sampler, collate_fn=collate_images, num_workers=num_workers,
                        persistent_workers=False)
    logs = _Logs(out_dir, plan.spec, run.step, ctx.is_main, reporter)
    started = time.monotonic()
    halt_code = 0
    bar = tqdm(total=config.steps, initial=run.step, disable=not (progress and ctx.is_main), desc="feature map",
               unit="step")
    with bar, warnings_above(bar), StopRequested() as stop:  # an error prints below the bar's last line
        for batch in loader:
            x = to_model_range(batch, input_range,  # a NaN/Inf image stops the run here, naming it
                               describe=lambda j: describe_image(plan.source, sampler.batch(run.step)[j]))
            x = x.to(ctx.device)
            xp, labels = plan.perturbations(x, generator=_generator(config.seed, 3, run.step),
                                            p=schedule.probability(run.step))
            loss = _optimizer_step(run, net, xp[shard], labels[shard], config, ctx.device)
            run.step += 1
            bar.update(1)
            out_of_time = max_minutes is not None and (time.monotonic() - started) > 60 * max_minutes
            halt_code = max_over_processes(stop.signum if stop.flag else 1 if out_of_time else 0, ctx.device)
            save_now = run.step % config.checkpoint_every == 0 or run.step == config.steps or halt_code
            if ctx.is_main:
                logs.train(run, loss, schedule, config, started, bar, force=bool(save_now))
                logs.evaluate(run, plan, config, bar, xp)
            if save_now:
                run.train_seconds += time.monotonic() - started
                started = time.monotonic()
                if ctx.is_main:
                    _save(run, plan, config, out_dir / CHECKPOINT_NAME, description)
            if halt_code:
                break
    bar.close()
    return halt_code


def _optimizer_step(run: _Run, net: torch.nn.Module, xp: Tensor, labels: Tensor, config: TrainConfig,
                    device: torch.device) -> float:
    """One RAdam step on this process's slice of the perturbed batch; returns the loss (MSE on the labels)."""
    for group in run.optimizer.param_groups:
        group["lr"] = config.learning_rate(run.step)
    with _autocast(device, config.precision):
        prediction = net(xp)[-1].flatten(1)
    loss = F.mse_loss(prediction.float(), labels)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return loss.item()
