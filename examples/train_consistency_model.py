"""Consistency training (ECT-style) with the AYT tangent loss or a baseline loss, on CIFAR-10 or MNIST.

One training step (METHOD.md Sec. 5; Geng et al. 2024 ECT; Kim, Cha & Ye 2025 AYT):

    t ~ exp(N(-1.1, 2.0^2)),  r = r_from_t(t)                         noise levels of the pair
    x_t = x0 + t eps,  x_r = x0 + r eps                                same eps
    D_t = D_theta(x_t, t)            (with grad)                       EDM-preconditioned U-Net
    D_r = D_theta(x_r, r)            (no grad, same dropout mask)      x0 where r = 0
    loss = objective(D_t, D_r, w = 1 / (t - r))                        --loss mfd | lpips | pseudo-huber | l2

Quick run on a CPU (a tiny U-Net and a tiny feature map; ~0.45 CPU-seconds per step with --loss mfd):

    mfd-loss train --data cifar10 --out runs/fmap-tiny --arch vgg11 --width 0.125 --steps 300 --batch-size 64
    python examples/train_fd_classifier.py --dataset cifar10 --out runs/fd-cifar10
    OMP_NUM_THREADS=1 python examples/train_consistency_model.py --out runs/ct-mfd --loss mfd \\
        --mfd-pretrained runs/fmap-tiny --steps 200 --batch-size 16 --channels 16 --channel-mult 1,2 \\
        --num-blocks 1 --attention none --optimizer adam --lr 1e-3 --ema-decay 0.99 --eval-every 100 \\
        --fd-samples 500 --fd-real 2000

Full scale (the paper's recipe: batch 128, RAdam 1e-4, EMA 0.9999, 400k iterations) on 8 GPUs:

    torchrun --nproc_per_node 8 examples/train_consistency_model.py --out runs/ct-mfd --loss mfd \\
        --channels 128 --channel-mult 2,2,2 --num-blocks 4 --dropout 0.2 --steps 400000 --batch-size 128 \\
        --fd-samples 50000

Rerun with --resume to continue exactly where a run stopped; --init PATH tunes from a checkpoint.
The output folder holds checkpoint.pt, log.jsonl, args.json and samples/step_*_{1,2}step.png.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fd_metric import FrechetDistance  # noqa: E402
from unet import build_network  # noqa: E402

from mfd_loss.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from mfd_loss.consistency import (  # noqa: E402
    EDMDenoiser, consistency_weight, one_step_sample, r_from_t, sample_noise_levels, two_step_sample,
)
from mfd_loss.datasets import load_cifar10, load_mnist  # noqa: E402
from mfd_loss.objectives import OBJECTIVES, build_objective  # noqa: E402

# Arguments that define a run: resuming with a different value is an error (steps and eval settings may change).
RUN_IDENTITY = ("dataset", "loss", "direction", "blend", "ramp_steps", "mfd_pretrained", "mfd_distance", "lpips_net",
                "huber_c", "optimizer", "arch", "channels", "channel_mult", "num_blocks", "attention", "dropout", "batch_size", "lr",
                "ema_decay", "seed", "xflip", "p_mean", "p_std", "q", "k", "b", "stage", "sigma_data", "init")


def _ints(text: str) -> tuple[int, ...]:
    return () if text in ("", "none") else tuple(int(v) for v in text.split(","))


def _huber_c(text: str) -> float | None:
    return None if text == "ict" else float(text)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's layout and appends each flag's default."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=34, width=110)

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or "default:" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="train_consistency_model.py", description=__doc__, formatter_class=_HelpFormatter,
        usage="%(prog)s --out DIR [--loss {mfd,lpips,pseudo-huber,l2}] [--direction {normalized,raw}] [options]")
    g = p.add_argument_group("data and output")
    g.add_argument("--dataset", choices=["cifar10", "mnist"], default="cifar10",
                   help="training data (MNIST is padded to 32x32)")
    g.add_argument("--data-dir", default=None, help="folder holding cifar10/ and mnist/ (default: $MFD_DATA_DIR or shared/data)")
    g.add_argument("--out", required=True, help="run folder: checkpoint.pt, log.jsonl, samples/*.png")
    g.add_argument("--resume", action="store_true", help="continue exactly from OUT/checkpoint.pt (an error if it is missing)")
    g.add_argument("--init", default=None, metavar="PATH",
                   help="tune from a checkpoint.pt of this script (its EMA weights) or a .safetensors state dict")
    g.add_argument("--xflip", action=argparse.BooleanOptionalAction, default=True,
                   help="random horizontal flips of training images (CIFAR-10 only)")

    g = p.add_argument_group("loss")
    g.add_argument("--loss", choices=sorted(OBJECTIVES), default="mfd",
                   help="mfd: AYT tangent loss of the Manifold Feature Distance; lpips: the same with LPIPS; "
                        "pseudo-huber: ECT's loss (c = --huber-c); l2: mean squared error")
    g.add_argument("--direction", choices=["normalized", "raw"], default="normalized",
                   help="tangent loss direction: unit gradient per sample (AYT) or the raw feature-distance gradient")
    g.add_argument("--blend", type=float, default=None, metavar="LAMBDA",
                   help="train on pseudo-Huber(c=0) + LAMBDA * ramp * tangent loss instead of the tangent loss alone")
    g.add_argument("--ramp-steps", type=int, default=5000, help="length of the --blend ramp in steps")
    g.add_argument("--mfd-pretrained", default=None, metavar="NAME_OR_PATH",
                   help="MFD feature map: a registered name or a folder with model.safetensors + config.json "
                        "(default: the shipped map of --dataset, 'cifar10' or 'mnist')")
    g.add_argument("--mfd-distance", choices=["group", "squared"], default="group", help="MFD form")
    g.add_argument("--lpips-net", choices=["vgg", "alex", "squeeze"], default="vgg", help="LPIPS backbone")
    g.add_argument("--huber-c", type=_huber_c, default=0.0, metavar="C",
                   help="pseudo-Huber constant: a number (0 = ECT's L2 norm) or 'ict' for 0.00054*sqrt(d)")

    g = p.add_argument_group("network")
    g.add_argument("--arch", choices=["unet", "diffusers"], default="unet",
                   help="unet: examples/unet.py; diffusers: diffusers' UNet2DModel (pip install diffusers)")
    g.add_argument("--channels", type=int, default=64, help="width of the first U-Net level")
    g.add_argument("--channel-mult", type=_ints, default="1,2,2", metavar="M,M,...",
                   help="width multipliers per level")
    g.add_argument("--num-blocks", type=int, default=2, help="residual blocks per level")
    g.add_argument("--attention", type=_ints, default="16", metavar="RES,...",
                   help="resolutions with self-attention, or 'none'")
    g.add_argument("--dropout", type=float, default=0.1, help="dropout inside residual blocks")

    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=400_000, help="total training steps")
    g.add_argument("--batch-size", type=int, default=128, help="global batch (split over processes)")
    g.add_argument("--optimizer", choices=["radam", "adam"], default="radam",
                   help="RAdam (the paper's) or Adam (steadier for tiny, high-lr CPU runs: RAdam's first 5 steps are "
                        "un-normalised momentum steps)")
    g.add_argument("--lr", type=float, default=1e-4, help="learning rate")
    g.add_argument("--ema-decay", type=float, default=0.9999,
                   help="EMA decay, warmed up as min(decay, (1 + step) / (10 + step))")
    g.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order, noise and dropout")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="autocast dtype: auto = bf16 on CUDA (fp16 where bf16 is missing), fp32 on CPU")
    g.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    g.add_argument("--max-minutes", type=float, default=None, help="stop with a checkpoint after this wall time")

    g = p.add_argument_group("ECT schedule (defaults: the AYT / ECT CIFAR-10 setting)")
    g.add_argument("--p-mean", type=float, default=-1.1, help="mean of ln t")
    g.add_argument("--p-std", type=float, default=2.0, help="std of ln t")
    g.add_argument("--q", type=float, default=256.0, help="t -> r gap factor q")
    g.add_argument("--k", type=float, default=8.0, help="t -> r sigmoid height k")
    g.add_argument("--b", type=float, default=1.0, help="t -> r sigmoid slope b")
    g.add_argument("--stage", type=int, default=0, help="ECT stage (AYT keeps 0)")
    g.add_argument("--sigma-data", type=float, default=0.5, help="EDM sigma_data")
    g.add_argument("--sigma-max", type=float, default=80.0, help="noise level of the first sampling step")
    g.add_argument("--sigma-mid", type=float, default=0.821, help="noise level of the second sampling step")

    g = p.add_argument_group("logging, evaluation, checkpoints")
    g.add_argument("--log-every", type=int, default=50, help="steps per log line")
    g.add_argument("--eval-every", type=int, default=5000, help="steps between evaluations (also at start and end)")
    g.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints")
    g.add_argument("--num-samples", type=int, default=64, help="images in each sample grid")
    g.add_argument("--fd-samples", type=int, default=10_000, help="generated images per Fréchet distance (0: none)")
    g.add_argument("--fd-real", type=int, default=0, metavar="N",
                   help="real test images for the Fréchet statistics (0: the whole test split)")
    g.add_argument("--fd-network", default="auto", metavar="auto|inception|PATH|none",
                   help="Fréchet-distance features: Inception (FID) when its weights are cached, else the "
                        "classifier folder from train_fd_classifier.py (reported as FD_<name>)")
    g.add_argument("--fd-classifier", default=None, metavar="PATH",
                   help="classifier folder used by --fd-network auto (default: runs/fd-<dataset>)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.steps < 0:
        p.error("--batch-size must be positive and --steps non-negative")
    return args


# ----------------------------------------------------------------------------------------------------- data
def load_images(dataset: str, split: str, data_dir: str | None = None) -> tuple[Tensor, Tensor]:
    """uint8 (N, C, 32, 32) images and labels; MNIST's 28x28 digits are padded with background to 32x32."""
    if dataset == "cifar10":
        return load_cifar10(split, data_dir)
    images, labels = load_mnist(split, data_dir)
    return F.pad(images, (2, 2, 2, 2)), labels


class Unpadded(torch.nn.Module):
    """A distance applied to the central 28x28 digits of MNIST images padded to 32x32 (what the shipped
    "mnist" feature map was trained on); the padding is background in prediction and target alike."""

    def __init__(self, distance: torch.nn.Module, pad: int):
        super().__init__()
        self.distance, self.pad = distance, pad

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        p = self.pad
        return self.distance(prediction[..., p:-p, p:-p], target[..., p:-p, p:-p])


def seeded(*values: int) -> torch.Generator:
    """A CPU generator seeded from integers (the randomness of step s depends on (seed, s) only)."""
    seed = 0
    for v in values:
        seed = (seed * 1_000_003 + int(v) + 0x9E3779B9) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def batch_indices(step: int, batch_size: int, num_images: int, seed: int) -> Tensor:
    """Global batch of a step: a fresh permutation of the data each epoch."""
    start = step * batch_size
    parts, position = [], start
    while position < start + batch_size:
        epoch, offset = divmod(position, num_images)
        take = min(num_images - offset, start + batch_size - position)
        parts.append(torch.randperm(num_images, generator=seeded(seed, 1, epoch))[offset:offset + take])
        position += take
    return torch.cat(parts)


# ----------------------------------------------------------------------------------------------- helpers
def setup_device(requested: str) -> tuple[torch.device, int, int]:
    """(device, rank, world size); joins the process group when launched by torchrun."""
    device = torch.device("cuda" if requested == "auto" and torch.cuda.is_available() else
                          ("cpu" if requested == "auto" else requested))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return device, 0, 1
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device, dist.get_rank(), dist.get_world_size()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@contextlib.contextmanager
def same_dropout(device: torch.device):
    """Replay the RNG of the first pass in the second: both passes draw the same dropout masks."""
    state = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()
    yield
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, m in zip(ema.parameters(), model.parameters()):
        e.lerp_(m.detach(), 1.0 - decay)


def init_weights(model: nn.Module, path: str) -> None:
    """Load network weights to tune from: an EMA of this script's checkpoint or a safetensors state dict."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = load_checkpoint(path)["ema"]
    model.load_state_dict(state, strict=True)


def to_uint8(images: Tensor) -> Tensor:
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# ------------------------------------------------------------------------------------------- evaluation
def fixed_pairs(args, images: Tensor, device: torch.device, n: int = 64) -> tuple[Tensor, ...]:
    """A fixed batch of (x0, t, r, eps) for a noise-free measure of progress (the same at every evaluation)."""
    gen = seeded(args.seed, 9)
    idx = torch.randperm(images.shape[0], generator=gen)[:n]
    x0 = images[idx].float() / 127.5 - 1.0
    t = sample_noise_levels(x0.shape[0], gen, args.p_mean, args.p_std)
    eps = torch.randn(x0.shape, generator=gen)
    r = r_from_t(t, args.q, args.k, args.b, args.stage)
    return x0.to(device), t.to(device), r.to(device), eps.to(device)


def consistency_gap(model: EDMDenoiser, objective: nn.Module, pairs: tuple[Tensor, ...]) -> float:
    """mean_b w_b d(D_t,b, D_r,b) on the fixed pairs, dropout off: the objective's own distance, deterministic."""
    x0, t, r, eps = pairs
    was_training = model.training
    model.eval()
    with torch.no_grad():
        d_t = model(x0 + t[:, None, None, None] * eps, t)
        d_r = torch.where((r > 0)[:, None, None, None], model(x0 + r[:, None, None, None] * eps, r), x0)
        weight = consistency_weight(t, r)
        value = float((weight * objective(d_t, d_r, weight).distance).mean())
    model.train(was_training)
    return value


def evaluate(args, ema: EDMDenoiser, step: int, fd: FrechetDistance | None, rank: int, world: int,
             device: torch.device, channels: int, out: Path) -> dict[str, Any]:
    """Sample grids (rank 0) and 1-step / 2-step Fréchet distances (all ranks) with the EMA network."""
    from torchvision.utils import save_image

    ema.eval()
    result: dict[str, Any] = {"step": step}
    noise = torch.randn(args.num_samples, channels, 32, 32, generator=seeded(args.seed, 7)).to(device)
    samplers = {
        "1step": lambda z, g: one_step_sample(ema, z, args.sigma_max),
        "2step": lambda z, g: two_step_sample(ema, z, args.sigma_max, args.sigma_mid, generator=g),
    }
    for name, sample in samplers.items():
        if rank == 0:
            images = sample(noise, torch.Generator(device).manual_seed(args.seed + 8))
            path = out / "samples" / f"step_{step:07d}_{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_image((images.float().clamp(-1, 1) + 1) / 2, path, nrow=int(math.sqrt(args.num_samples)))
            result[f"grid_{name}"] = str(path)
        if fd is not None:
            share = args.fd_samples // world + (rank < args.fd_samples % world)
            gen = torch.Generator(device).manual_seed(1000 + rank)
            for i in range(0, share, 250):
                z = torch.randn(min(250, share - i), channels, 32, 32, generator=gen, device=device)
                fd.add_fake(to_uint8(sample(z, gen)))
            result[f"{fd.name}_{name}"] = fd.compute()
    return result


# ---------------------------------------------------------------------------------------------- training
def main(args: argparse.Namespace) -> dict[str, Any]:
    device, rank, world = setup_device(args.device)
    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} must be divisible by the {world} processes")
    local_batch = args.batch_size // world
    out = Path(args.out)
    ckpt_path = out / "checkpoint.pt"
    if args.resume and not ckpt_path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
    if not args.resume and ckpt_path.exists():
        raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue it, or choose another --out")
    amp = autocast_dtype(args.precision, device)

    images, _ = load_images(args.dataset, "train", args.data_dir)
    channels = images.shape[1]
    torch.manual_seed(args.seed)
    net = build_network(args.arch, in_channels=channels, channels=args.channels, channel_mult=args.channel_mult,
                        num_blocks=args.num_blocks, attention=args.attention, dropout=args.dropout, resolution=32)
    model = EDMDenoiser(net, args.sigma_data).to(device)
    if args.init:
        init_weights(model, args.init)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = {"radam": torch.optim.RAdam, "adam": torch.optim.Adam}[args.optimizer](model.parameters(), lr=args.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    objective = build_objective(args.loss, direction=args.direction, blend=args.blend, ramp_steps=args.ramp_steps,
                                mfd_pretrained=args.mfd_pretrained or args.dataset, mfd_distance=args.mfd_distance,
                                lpips_net=args.lpips_net, huber_c=args.huber_c).to(device)
    feature_map = getattr(objective.distance, "feature_map", None)
    if args.dataset == "mnist" and tuple(getattr(feature_map, "config", None).resolution if feature_map else ()) == (28, 28):
        objective.distance = Unpadded(objective.distance, pad=2)

    step, train_seconds, history = 0, 0.0, []
    if args.resume:
        state = load_checkpoint(ckpt_path)
        now = json.loads(json.dumps(vars(args)))
        changed = [k for k in RUN_IDENTITY if state["args"].get(k) != now[k]]
        if changed:
            raise ValueError(f"{ckpt_path} was written with different {changed}; use another --out")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step, train_seconds, history = state["step"], state["train_seconds"], state["history"]
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if world > 1 else model

    fd = None
    if args.fd_samples > 0 and args.fd_network != "none":
        test_images, _ = load_images(args.dataset, "test", args.data_dir)
        test_images = test_images[:args.fd_real or None]
        fd = FrechetDistance(args.fd_network, test_images[rank::world], device=device,
                             classifier_dir=args.fd_classifier or f"runs/fd-{args.dataset}")

    def log(entry: dict[str, Any]) -> None:
        history.append(entry)
        if rank == 0:
            with open(out / "log.jsonl", "a") as fh:
                fh.write(json.dumps(entry) + "\n")

    def checkpoint() -> None:
        if rank == 0:
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "step": step, "train_seconds": train_seconds, "history": history,
                "args": json.loads(json.dumps(vars(args))),
            })
        if world > 1:
            dist.barrier()

    pairs = fixed_pairs(args, images, device)

    def run_eval() -> None:
        # training wall-clock so far, read before any evaluation work (evaluations are excluded, as in the
        # checkpointed train_seconds): the x axis of convergence-against-time plots
        clock = round(train_seconds + time.monotonic() - started, 2)
        entry = {"consistency_gap": consistency_gap(model, objective, pairs), "train_seconds": clock}
        entry.update(evaluate(args, ema, step, fd, rank, world, device, channels, out))
        log({"eval": entry})
        if rank == 0:
            numbers = ", ".join(f"{k} {v:.2f}" for k, v in entry.items() if isinstance(v, float))
            tqdm.write(f"step {step}: {numbers or 'sample grids'} -> {entry.get('grid_1step')}")

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "args.json").write_text(json.dumps(vars(args), indent=2, default=str))
        print(f"{args.loss} objective on {args.dataset}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
              f"parameters, {world} process(es) on {device}, autocast {amp}, fd {fd.name if fd else 'off'}")
    started = time.monotonic()
    if step == 0:
        run_eval()
    bar = tqdm(total=args.steps, initial=step, disable=rank != 0 or args.no_progress, unit="step", desc=args.loss)
    started, window_start, window_cpu = time.monotonic(), time.monotonic(), time.process_time()
    sums = {"loss": 0.0, "distance": 0.0, "n": 0}
    while step < args.steps:
        model.train()
        # The global batch, its flips, noise levels and noise depend on (seed, step) only; each process takes
        # its slice, so K processes compute the same update as one process with the whole batch.
        gen = seeded(args.seed, 2, step)
        x0 = images[batch_indices(step, args.batch_size, images.shape[0], args.seed)].float() / 127.5 - 1.0
        flip = torch.rand(args.batch_size, 1, 1, 1, generator=gen) < 0.5
        if args.xflip and args.dataset == "cifar10":
            x0 = torch.where(flip, x0.flip(-1), x0)
        t = sample_noise_levels(args.batch_size, gen, args.p_mean, args.p_std)
        eps = torch.randn(x0.shape, generator=gen)
        mine = slice(rank * local_batch, (rank + 1) * local_batch)
        x0, t, eps = x0[mine].to(device), t[mine].to(device), eps[mine].to(device)
        r = r_from_t(t, args.q, args.k, args.b, args.stage)
        weight = consistency_weight(t, r)
        torch.manual_seed(seeded(args.seed, 3, rank, step).initial_seed())  # dropout masks of this step
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            with same_dropout(device):
                d_t = ddp(x0 + t[:, None, None, None] * eps, t)
            with torch.no_grad():
                d_r = model(x0 + r[:, None, None, None] * eps, r)
            d_r = torch.where((r > 0)[:, None, None, None], d_r, x0)
            result = objective(d_t, d_r, weight, step)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(result.loss).backward()
        scaler.step(optimizer)
        scaler.update()
        update_ema(ema, model, min(args.ema_decay, (1 + step) / (10 + step)))
        step += 1
        bar.update(1)
        sums["loss"] += result.loss.detach()  # summed on the device; read (one sync) at log time
        sums["distance"] += (weight * result.distance).mean()
        sums["n"] += 1
        if step % args.log_every == 0 or step == args.steps:
            now, cpu = time.monotonic(), time.process_time()
            entry = {"step": step, "loss": float(sums["loss"]) / sums["n"],
                     "weighted_distance": float(sums["distance"]) / sums["n"],
                     "seconds_per_step": (now - window_start) / sums["n"],
                     "cpu_seconds_per_step": (cpu - window_cpu) / sums["n"]}  # CPU time of this process: a
            log(entry)                                                         # shared machine's fairer clock
            bar.set_postfix(loss=f"{entry['loss']:.4g}", wdist=f"{entry['weighted_distance']:.4g}")
            window_start, window_cpu, sums = now, cpu, {"loss": 0.0, "distance": 0.0, "n": 0}
        out_of_time = args.max_minutes is not None and time.monotonic() - started > 60 * args.max_minutes
        if step % args.checkpoint_every == 0 or step == args.steps or out_of_time:
            train_seconds += time.monotonic() - started
            started = time.monotonic()
            checkpoint()
        if step % args.eval_every == 0 or step == args.steps:
            eval_started, eval_cpu = time.monotonic(), time.process_time()
            run_eval()
            started += time.monotonic() - eval_started  # evaluation time counts neither as training nor per step
            window_start += time.monotonic() - eval_started
            window_cpu += time.process_time() - eval_cpu
        if out_of_time:
            break
    bar.close()
    evals = [h["eval"] for h in history if "eval" in h]
    summary = {"step": step, "train_seconds": round(train_seconds, 1), "first_eval": evals[0] if evals else None,
               "last_eval": evals[-1] if evals else None,
               "log": [h for h in history if "loss" in h]}
    if world > 1:
        dist.destroy_process_group()
    return summary


if __name__ == "__main__":
    main(parse_args())
