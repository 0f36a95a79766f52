"""What the two denoiser-training examples share: flags, data, the EDM network, EMA, checkpoints, DDP, the loop.

``train_consistency_model.py`` (consistency training, tuning and distillation) and ``train_diffusion_model.py``
(the EDM denoiser they start from) differ only in the loss of a step and in how they sample; everything
else is here, written once:

* :func:`add_common_args` - the flags of data, network, optimisation, logging and evaluation;
* :class:`Session` - device and process group (``torchrun``: NCCL on CUDA, gloo on CPU), the preconditioned
  U-Net and its EMA, the optimiser, exact resume from atomic checkpoints, the training clock, the Fréchet
  distance, and :meth:`Session.train`, the loop that calls the example's ``step_loss``;
* :func:`load_denoiser` - the EMA network of a checkpoint, rebuilt from the architecture it was saved with.

The randomness of step s (batch, flips, noise levels, noise, dropout) depends on (seed, s) only, and each
process takes its slice of the global batch, so K processes compute the update of one process with the
whole batch, and a resumed run continues exactly.
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
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from fd_metric import FrechetDistance
from unet import build_network

from mfd_loss.training.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from mfd_loss.consistency import EDMDenoiser
from mfd_loss.training.datasets import load_cifar10, load_mnist
from mfd_loss.training.distributed import max_over_processes
from mfd_loss.training.interrupt import StopRequested, exit_status, stop_reason
from mfd_loss.training.reporting import check_report_to, make_reporter

DATASETS = ("cifar10", "mnist", "fashion-mnist")
METRICS = Path(__file__).resolve().parent.parent / "benchmarks" / "metrics"  # the committed FD classifiers
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist (apt install)
# Flags that define the network: a checkpoint records them, --init and --teacher rebuild from them.
NETWORK_ARGS = ("arch", "channels", "channel_mult", "num_blocks", "attention", "dropout")
# Flags shared by both examples that define a run: resuming with another value is an error.
COMMON_IDENTITY = ("dataset", *NETWORK_ARGS, "optimizer", "batch_size", "lr", "ema_decay", "seed", "xflip",
                   "sigma_data", "init")

Sampler = Callable[[nn.Module, Tensor, torch.Generator], Tensor]


# ------------------------------------------------------------------------------------------------ flags
def ints(text: str) -> tuple[int, ...]:
    """``"1,2,2"`` -> (1, 2, 2); ``""`` or ``"none"`` -> ()."""
    return () if text in ("", "none") else tuple(int(v) for v in text.split(","))


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's layout and appends each flag's default."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=34, width=110)

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or "default:" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def add_common_args(p: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """Add the shared flag groups; returns them by name so an example can add its own flags to a group."""
    groups = {}
    g = groups["data"] = p.add_argument_group("data and output")
    g.add_argument("--dataset", choices=DATASETS, default="cifar10",
                   help="training data (MNIST and Fashion-MNIST are padded to 32x32)")
    g.add_argument("--data-dir", default=None, help="folder holding cifar10/ and mnist/ (default: $MFD_DATA_DIR or shared/data)")
    g.add_argument("--out", required=True, help="run folder: checkpoint.pt, log.jsonl, samples/*.png")
    g.add_argument("--resume", action="store_true", help="continue exactly from OUT/checkpoint.pt (an error if it is missing)")
    g.add_argument("--init", default=None, metavar="PATH",
                   help="start from a checkpoint.pt of either example (its EMA weights, e.g. a pretrained "
                        "denoiser of train_diffusion_model.py) or a .safetensors state dict of the same network")
    g.add_argument("--xflip", action=argparse.BooleanOptionalAction, default=True,
                   help="random horizontal flips of training images (CIFAR-10 only)")

    g = groups["network"] = p.add_argument_group("network")
    g.add_argument("--arch", choices=["unet", "diffusers"], default="unet",
                   help="unet: examples/unet.py; diffusers: diffusers' UNet2DModel (pip install diffusers)")
    g.add_argument("--channels", type=int, default=64, help="width of the first U-Net level")
    g.add_argument("--channel-mult", type=ints, default="1,2,2", metavar="M,M,...", help="width multipliers per level")
    g.add_argument("--num-blocks", type=int, default=2, help="residual blocks per level")
    g.add_argument("--attention", type=ints, default="16", metavar="RES,...",
                   help="resolutions with self-attention, or 'none'")
    g.add_argument("--dropout", type=float, default=0.1, help="dropout inside residual blocks")
    g.add_argument("--sigma-data", type=float, default=0.5, help="EDM sigma_data of the preconditioning")

    g = groups["optimisation"] = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=400_000, help="total training steps")
    g.add_argument("--batch-size", type=int, default=128, help="global batch (split over processes)")
    g.add_argument("--optimizer", choices=["radam", "adam"], default="radam",
                   help="RAdam (the paper's) or Adam (steadier for tiny, high-lr CPU runs: RAdam's first 5 steps are "
                        "un-normalised momentum steps)")
    g.add_argument("--lr", type=float, default=1e-4, help="learning rate")
    g.add_argument("--lr-warmup", type=int, default=0, metavar="STEPS",
                   help="linear learning-rate warm-up: lr x min(1, (step + 1) / STEPS) (0: none)")
    g.add_argument("--ema-decay", type=float, default=0.9999,
                   help="EMA decay, warmed up as min(decay, (1 + step) / (10 + step))")
    g.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order, noise and dropout")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="autocast dtype: auto = bf16 on CUDA (fp16 where bf16 is missing), fp32 on CPU")
    g.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    g.add_argument("--max-minutes", type=float, default=None, help="stop with a checkpoint after this wall time")

    g = groups["logging"] = p.add_argument_group("logging, evaluation, checkpoints")
    g.add_argument("--log-every", type=int, default=50, help="steps per log line")
    g.add_argument("--eval-every", type=int, default=5000, help="steps between evaluations (also at start and end)")
    g.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints")
    g.add_argument("--num-samples", type=int, default=64, help="images in each sample grid")
    g.add_argument("--fd-samples", type=int, default=10_000, help="generated images per Fréchet distance (0: none)")
    g.add_argument("--fd-real", type=int, default=0, metavar="N",
                   help="real test images for the Fréchet statistics (0: the whole test split)")
    g.add_argument("--fd-network", default="auto", metavar="auto|inception|PATH|none",
                   help="Fréchet-distance features: Inception (FID) when its weights are cached, else the "
                        "classifier folder from benchmarks/fd_classifier.py (reported as FD_<name>)")
    g.add_argument("--fd-classifier", default=None, metavar="PATH",
                   help="classifier folder used by --fd-network auto (default: the committed benchmarks/metrics/fd-<dataset>)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    g.add_argument("--report-to", choices=["none", "tensorboard", "wandb"], default="none",
                   help="also send log.jsonl's numbers and the sample grids to TensorBoard (OUT/tensorboard) or W&B")
    return groups


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    if args.batch_size < 1 or args.steps < 0:
        p.error("--batch-size must be positive and --steps non-negative")
    if args.lr_warmup < 0:
        p.error("--lr-warmup must be non-negative")
    for name in ("log_every", "eval_every", "checkpoint_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


# ------------------------------------------------------------------------------------------------- data


def load_fashion_mnist(split: str, directory: str | None = None) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST (Xiao et al. 2017) from its gzipped idx files: (N, 1, 28, 28) uint8 and (N,) int64 labels.

    ``directory`` defaults to $MFD_FASHION_MNIST_DIR, else Debian's /usr/share/datasets/fashion-mnist.

    Raises:
        ValueError: unknown split. FileNotFoundError: the idx files are missing (install them with
        ``apt install dataset-fashion-mnist`` or point $MFD_FASHION_MNIST_DIR at a folder holding them).
    """
    import gzip

    import numpy as np

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(directory or os.environ.get("MFD_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    prefix = "train" if split == "train" else "t10k"
    paths = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    if not all(p.is_file() for p in paths):
        raise FileNotFoundError(f"Fashion-MNIST idx files not found in {root}: apt install dataset-fashion-mnist, "
                                f"or set MFD_FASHION_MNIST_DIR")
    images = np.frombuffer(gzip.open(paths[0]).read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    labels = np.frombuffer(gzip.open(paths[1]).read(), np.uint8, offset=8).astype(np.int64)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels)


def load_images(dataset: str, split: str, data_dir: str | None = None) -> tuple[Tensor, Tensor]:
    """uint8 (N, C, 32, 32) images and labels; the 28x28 MNIST and Fashion-MNIST images are padded with
    background to 32x32 (``data_dir`` is not used for Fashion-MNIST: see :func:`load_fashion_mnist`)."""
    if dataset == "cifar10":
        return load_cifar10(split, data_dir)
    if dataset not in DATASETS:
        raise ValueError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")
    images, labels = load_mnist(split, data_dir) if dataset == "mnist" else load_fashion_mnist(split)
    return F.pad(images, (2, 2, 2, 2)), labels


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


def to_uint8(images: Tensor) -> Tensor:
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# ------------------------------------------------------------------------------------------ helpers
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
def same_dropout(device: torch.device) -> Iterator[None]:
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


def build_denoiser(options: dict[str, Any] | argparse.Namespace, channels: int) -> EDMDenoiser:
    """The EDM-preconditioned U-Net of a run's network flags (``NETWORK_ARGS`` and ``sigma_data``)."""
    o = vars(options) if isinstance(options, argparse.Namespace) else options
    net = build_network(o["arch"], in_channels=channels, channels=o["channels"], channel_mult=tuple(o["channel_mult"]),
                        num_blocks=o["num_blocks"], attention=tuple(o["attention"]), dropout=o["dropout"], resolution=32)
    return EDMDenoiser(net, o.get("sigma_data", 0.5))


def _network_mismatch(path: str, saved: dict[str, Any], mine: dict[str, Any] | None) -> str:
    if mine is None:
        return ""
    differ = {k: (saved.get(k), mine[k]) for k in NETWORK_ARGS if k != "dropout" and saved.get(k) != mine[k]}
    return f" ({path} has {', '.join(f'{k}={a} where this run has {b}' for k, (a, b) in differ.items())})" if differ else ""


def init_weights(model: nn.Module, path: str, args: argparse.Namespace | None = None) -> None:
    """Load network weights to start from: the EMA of a checkpoint of either example, or a safetensors state dict.

    Raises:
        FileNotFoundError: no file at path.
        ValueError: the weights belong to another architecture (the message names the flags that differ).
    """
    saved: dict[str, Any] = {}
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        checkpoint = load_checkpoint(path)
        state, saved = checkpoint["ema"], checkpoint.get("args", {})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        mine = json.loads(json.dumps(vars(args))) if args is not None else None
        raise ValueError(f"{path} holds weights of another network{_network_mismatch(path, saved, mine)}: pass the "
                         f"network flags it was trained with (--channels, --channel-mult, --num-blocks, "
                         f"--attention)") from err


def load_denoiser(path: str, channels: int, device: torch.device) -> EDMDenoiser:
    """The EMA denoiser of a checkpoint, built from the network flags saved in it; frozen, in eval mode.

    ``path`` is a ``checkpoint.pt`` of either example, or the ``model.safetensors`` of an exported teacher
    (``benchmarks/export_teacher.py``), whose network flags are read from the ``config.json`` beside it.

    Raises:
        FileNotFoundError: no checkpoint at path. ValueError: the checkpoint records no network flags.
    """
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        saved = json.loads((Path(path).parent / "config.json").read_text()).get("network", {})
        checkpoint = {"ema": {k: v.float() for k, v in load_file(str(path)).items()}}
    else:
        checkpoint = load_checkpoint(path)
        saved = checkpoint.get("args", {})
    if any(k not in saved for k in NETWORK_ARGS):
        raise ValueError(f"{path} does not record its network flags; pass a checkpoint.pt written by "
                         f"train_diffusion_model.py or train_consistency_model.py")
    model = build_denoiser({**saved, "dropout": 0.0}, channels)
    model.load_state_dict(checkpoint["ema"], strict=True)
    return model.to(device).eval().requires_grad_(False)


class TrainingClock:
    """Seconds spent training, across resumes: a stopwatch that stands still while paused.

    Checkpoints store :meth:`read` taken while paused, and evaluations log it while paused, so a resumed run
    continues from the very value its last logged evaluation shows: the clock can never go backwards,
    however long a checkpoint write or an evaluation takes. ``source`` is ``"wall"`` (``time.monotonic``)
    or ``"cpu"`` (``time.process_time``: this process's CPU time, a shared machine's fairer clock).
    The clock is created stopped and runs from :meth:`start`, so set-up (decoding the data set, building the
    Fréchet-distance features, loading a feature map) is not training time: without this, every (re)start
    added its set-up to the run's training wall-clock, ~9 s per process for a CPU run whose 300 batch-16
    steps take 40 s.
    """

    def __init__(self, elapsed: float = 0.0, source: str = "wall"):
        if source not in ("wall", "cpu"):
            raise ValueError(f"source must be 'wall' or 'cpu', got {source!r}")
        self._source = source
        self._elapsed = float(elapsed)
        self._since: float | None = None

    def start(self) -> None:
        """Let the clock run (no-op if it already runs)."""
        if self._since is None:
            self._since = self._now()

    def _now(self) -> float:
        return time.monotonic() if self._source == "wall" else time.process_time()

    def read(self) -> float:
        return self._elapsed + (0.0 if self._since is None else self._now() - self._since)

    @contextlib.contextmanager
    def paused(self) -> Iterator[float]:
        """Stop the clock for the block; yields the reading at which it stands (re-entrant)."""
        if self._since is None:
            yield self._elapsed
            return
        self._elapsed, self._since = self.read(), None
        try:
            yield self._elapsed
        finally:
            self._since = self._now()


def save_grid(images: Tensor, path: Path) -> None:
    """A square PNG grid of [-1, 1] images."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((images.float().clamp(-1, 1) + 1) / 2, path, nrow=max(1, int(math.sqrt(images.shape[0]))))


# ---------------------------------------------------------------------------------------------- session
StepLoss = Callable[[Tensor, torch.Generator, int], tuple[Tensor, Tensor]]


class Session:
    """One training run of an example: set-up, resume, checkpoints, evaluation and the loop.

    Args:
        args: the parsed flags (:func:`add_common_args` plus the example's own).
        identity: flag names that define the run (resuming with another value is an error).
        label: shown in the start-up line and the progress bar.

    Attributes (for the example's ``step_loss``): ``device``, ``rank``, ``world``, ``amp`` (autocast dtype or
    None), ``images`` (uint8 train split), ``channels``, ``model`` (the online EDM denoiser), ``ddp`` (the same,
    wrapped for DDP when world > 1), ``ema``, ``local_batch``.

    Raises:
        FileNotFoundError: ``--resume`` without a checkpoint. FileExistsError: a checkpoint exists and
        ``--resume`` is missing. ValueError: the checkpoint was written with other identity flags, or the batch
        does not split over the processes.
    """

    def __init__(self, args: argparse.Namespace, identity: tuple[str, ...], label: str):
        self.args, self.identity, self.label = args, identity, label
        check_report_to(args.report_to)  # a missing tensorboard / wandb fails before the data is loaded
        self.device, self.rank, self.world = setup_device(args.device)
        if args.batch_size % self.world:
            raise ValueError(f"--batch-size {args.batch_size} must be divisible by the {self.world} processes")
        self.local_batch = args.batch_size // self.world
        self.out = Path(args.out)
        self.ckpt_path = self.out / "checkpoint.pt"
        if args.resume and not self.ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {self.ckpt_path}")
        if not args.resume and self.ckpt_path.exists():
            raise FileExistsError(f"{self.ckpt_path} exists: pass --resume to continue it, or choose another --out")
        self.amp = autocast_dtype(args.precision, self.device)
        self.images, _ = load_images(args.dataset, "train", args.data_dir)
        self.channels = self.images.shape[1]
        torch.manual_seed(args.seed)
        self.model = build_denoiser(args, self.channels).to(self.device)
        if args.init:
            init_weights(self.model, args.init, args)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        optimizer = {"radam": torch.optim.RAdam, "adam": torch.optim.Adam}[args.optimizer]
        self.optimizer = optimizer(self.model.parameters(), lr=args.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp is torch.float16)
        self.step, self.history, train_seconds, cpu_seconds = 0, [], 0.0, 0.0
        if args.resume:
            state = load_checkpoint(self.ckpt_path)
            now = json.loads(json.dumps(vars(args)))
            changed = [k for k in identity if state["args"].get(k) != now[k]]
            if changed:
                raise ValueError(f"{self.ckpt_path} was written with different {changed}; use another --out")
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.step, self.history = state["step"], state["history"]
            train_seconds, cpu_seconds = state["train_seconds"], state.get("cpu_seconds", 0.0)
            if self.rank == 0:
                # log.jsonl may run past the checkpoint (a run killed after logging steps it never checkpointed):
                # those steps are trained again, so the log restarts from the checkpoint's own history
                atomic_write(self.out / "log.jsonl", lambda tmp: Path(tmp).write_text(
                    "".join(json.dumps(entry) + "\n" for entry in self.history)))
        self.clock = TrainingClock(train_seconds, "wall")
        self.cpu_clock = TrainingClock(cpu_seconds, "cpu")
        self.ddp = nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device] if self.device.type == "cuda" else None) if self.world > 1 else self.model
        self.fd = None
        if args.fd_samples > 0 and args.fd_network != "none":
            test_images, _ = load_images(args.dataset, "test", args.data_dir)
            test_images = test_images[:args.fd_real or None]
            self.fd = FrechetDistance(args.fd_network, test_images[self.rank::self.world], device=self.device,
                                      classifier_dir=args.fd_classifier or METRICS / f"fd-{args.dataset}")
        self.reporter = make_reporter(args.report_to if self.rank == 0 else "none",
                                      self.out / ("tensorboard" if args.report_to == "tensorboard" else ""),
                                      config=json.loads(json.dumps(vars(args), default=str)), name=self.out.name)

    # -------------------------------------------------------------------------------- bookkeeping
    def log(self, entry: dict[str, Any]) -> None:
        self.history.append(entry)
        if self.rank == 0:
            with open(self.out / "log.jsonl", "a") as fh:
                fh.write(json.dumps(entry) + "\n")
            part, values = ("eval", entry["eval"]) if "eval" in entry else ("train", entry)
            self.reporter.scalars({f"{part}/{k}": v for k, v in values.items()
                                   if k != "step" and isinstance(v, (int, float))}, self.step)

    @contextlib.contextmanager
    def paused(self) -> Iterator[float]:
        """Both clocks stopped; yields the training wall-clock reading."""
        with self.clock.paused() as wall, self.cpu_clock.paused():
            yield wall

    def checkpoint(self) -> None:
        with self.paused() as wall:
            if self.rank == 0:
                save_checkpoint(self.ckpt_path, {
                    "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                    "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(), "step": self.step,
                    "train_seconds": wall, "cpu_seconds": self.cpu_clock.read(), "history": self.history,
                    "args": json.loads(json.dumps(vars(self.args))),
                })
            if self.world > 1:
                dist.barrier()

    def evaluate(self, samplers: dict[str, Sampler], extra: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
        """Sample grids (rank 0) and a Fréchet distance per sampler (all ranks) with the EMA network; logged.

        The entry records ``train_seconds``, the training wall-clock so far (evaluations and checkpoint writes
        excluded): the x axis of convergence-against-time plots.
        """
        args = self.args
        with self.paused() as wall:
            entry: dict[str, Any] = {"train_seconds": round(wall, 2), **(extra() if extra else {}), "step": self.step}
            self.ema.eval()
            noise = torch.randn(args.num_samples, self.channels, 32, 32, generator=seeded(args.seed, 7)).to(self.device)
            for name, sample in samplers.items():
                if self.rank == 0:
                    path = self.out / "samples" / f"step_{self.step:07d}_{name}.png"
                    grid = sample(self.ema, noise, torch.Generator(self.device).manual_seed(args.seed + 8))
                    save_grid(grid, path)
                    self.reporter.images(f"samples/{name}", grid, self.step)
                    entry[f"grid_{name}"] = str(path)
                if self.fd is not None:
                    share = args.fd_samples // self.world + (self.rank < args.fd_samples % self.world)
                    gen = torch.Generator(self.device).manual_seed(1000 + self.rank)
                    for i in range(0, share, 250):
                        z = torch.randn(min(250, share - i), self.channels, 32, 32, generator=gen, device=self.device)
                        self.fd.add_fake(to_uint8(sample(self.ema, z, gen)))
                    entry[f"{self.fd.name}_{name}"] = self.fd.compute()
            self.log({"eval": entry})
            if self.rank == 0:
                numbers = ", ".join(f"{k} {v:.2f}" for k, v in entry.items() if isinstance(v, float))
                tqdm.write(f"step {self.step}: {numbers or 'sample grids'} -> {entry.get(f'grid_{next(iter(samplers))}')}")
        return entry

    def batch(self, step: int) -> tuple[Tensor, torch.Generator]:
        """This process's slice of the global batch of ``step`` in [-1, 1] (flipped for CIFAR-10 with --xflip),
        and the step's generator for the example's noise levels and noise (draw them for the global batch)."""
        args = self.args
        gen = seeded(args.seed, 2, step)
        x0 = self.images[batch_indices(step, args.batch_size, self.images.shape[0], args.seed)].float() / 127.5 - 1.0
        flip = torch.rand(args.batch_size, 1, 1, 1, generator=gen) < 0.5
        if args.xflip and args.dataset == "cifar10":
            x0 = torch.where(flip, x0.flip(-1), x0)
        return x0, gen

    def mine(self, x: Tensor) -> Tensor:
        """This process's slice of a global-batch tensor, on the device."""
        return x[self.rank * self.local_batch:(self.rank + 1) * self.local_batch].to(self.device)

    # ------------------------------------------------------------------------------------ the loop
    def train(self, step_loss: StepLoss, samplers: dict[str, Sampler],
              extra_eval: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
        """Run to ``--steps``; returns a summary (step, train_seconds, first and last evaluation, log lines).

        ``step_loss(x0, generator, step)`` gets the global batch and the step's generator and returns the
        scalar loss of this process's slice and a (local batch,) tensor logged as ``weighted_distance``.
        """
        args = self.args
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "args.json").write_text(json.dumps(vars(args), indent=2, default=str))
            print(f"{self.label} on {args.dataset}, {sum(p.numel() for p in self.model.parameters()) / 1e6:.2f} M "
                  f"parameters, {self.world} process(es) on {self.device}, autocast {self.amp}, "
                  f"fd {self.fd.name if self.fd else 'off'}")
        evaluated = {h["eval"]["step"] for h in self.history if "eval" in h}
        if self.step not in evaluated and (self.step % args.eval_every == 0 or self.step == args.steps):
            # step 0, or a checkpoint whose evaluation never got logged (written before it, then killed)
            self.evaluate(samplers, extra_eval)
        bar = tqdm(total=args.steps, initial=self.step, disable=self.rank != 0 or args.no_progress, unit="step",
                   desc=self.label)
        started = time.monotonic()
        self.clock.start()
        self.cpu_clock.start()
        window = (self.clock.read(), self.cpu_clock.read())
        sums = {"loss": 0.0, "distance": 0.0, "n": 0}
        halt = 0
        with StopRequested() as stop:
            while self.step < args.steps:
                self.model.train()
                x0, gen = self.batch(self.step)
                torch.manual_seed(seeded(args.seed, 3, self.rank, self.step).initial_seed())  # dropout masks of this step
                if args.lr_warmup:  # a function of the step alone, so a resumed run continues it exactly
                    for group in self.optimizer.param_groups:
                        group["lr"] = args.lr * min(1.0, (self.step + 1) / args.lr_warmup)
                loss, distance = step_loss(x0, gen, self.step)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                update_ema(self.ema, self.model, min(args.ema_decay, (1 + self.step) / (10 + self.step)))
                self.step += 1
                bar.update(1)
                sums["loss"] += loss.detach()  # summed on the device; read (one sync) at log time
                sums["distance"] += distance.detach().mean()
                sums["n"] += 1
                if self.step % args.log_every == 0 or self.step == args.steps:
                    now = (self.clock.read(), self.cpu_clock.read())
                    entry = {"step": self.step, "loss": float(sums["loss"]) / sums["n"],
                             "weighted_distance": float(sums["distance"]) / sums["n"],
                             "seconds_per_step": (now[0] - window[0]) / sums["n"],
                             "cpu_seconds_per_step": (now[1] - window[1]) / sums["n"]}
                    self.log(entry)
                    bar.set_postfix(loss=f"{entry['loss']:.4g}", wdist=f"{entry['weighted_distance']:.4g}")
                    window, sums = now, {"loss": 0.0, "distance": 0.0, "n": 0}
                # decided by all processes together: on their own clocks or signals they could stop on different
                # steps and hang. 0 go on, 1 out of --max-minutes, > 1 the number of the signal that asked to stop
                out_of_time = args.max_minutes is not None and time.monotonic() - started > 60 * args.max_minutes
                halt = max_over_processes(stop.signum if stop.flag else 1 if out_of_time else 0, self.device)
                # evaluation first: a checkpoint then holds its step's evaluation, and a run killed during the
                # evaluation resumes from the previous checkpoint and evaluates again
                if self.step % args.eval_every == 0 or self.step == args.steps:
                    self.evaluate(samplers, extra_eval)  # the clocks stand still meanwhile: per-step times exclude it
                if self.step % args.checkpoint_every == 0 or self.step == args.steps or halt:
                    self.checkpoint()
                if halt:
                    break
        bar.close()
        self.reporter.close()
        evals = [h["eval"] for h in self.history if "eval" in h]
        stopped_by = None if self.step >= args.steps else stop_reason(halt)
        summary = {"step": self.step, "stopped_by": stopped_by, "train_seconds": round(self.clock.read(), 1),
                   "first_eval": evals[0] if evals else None, "last_eval": evals[-1] if evals else None,
                   "log": [h for h in self.history if "loss" in h]}
        if self.world > 1:
            dist.destroy_process_group()
        return summary


def exit_code(summary: dict[str, Any]) -> int:
    """The exit status of an example's run: 0 finished or out of ``--max-minutes``, 130/143 on SIGINT/SIGTERM.

    An interrupted run has written its checkpoint; this says so on stderr, with the way to resume.
    """
    stopped_by = summary.get("stopped_by")
    if stopped_by is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"stopped by {stopped_by} at step {summary['step']}; the checkpoint is saved: rerun the same command "
              f"with --resume to continue", file=sys.stderr)
    return exit_status(stopped_by)
