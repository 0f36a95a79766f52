"""Train the classifier whose features define the Fréchet distance ``FD_<name>`` of the benchmarks.

    python benchmarks/fd_classifier.py --dataset cifar10 --out benchmarks/metrics/fd-cifar10 --epochs 16

The network is :class:`fd_metric.ResNetClassifier` (ResNet-9 / airbench layout); the recipe is the standard
fast CIFAR-10 one: SGD with Nesterov momentum, a one-cycle learning rate (linear warm-up, then linear decay to
0), label smoothing, weight decay, and augmentation by random translation (reflect padding, then a random
32x32 crop: 4 px for CIFAR-10, 2 px for MNIST / Fashion-MNIST) plus horizontal flips for CIFAR-10 only.
Test accuracy is measured on the test split, plain and with flip test-time augmentation (CIFAR-10).

The output folder gets ``model.safetensors`` (float16), ``config.json`` (architecture, recipe, accuracy,
train time, git commit, the weights' SHA-256) and ``CARD.md``. An interrupted run resumes exactly when the
same command is rerun: ``checkpoint.pt`` (written atomically every ``--checkpoint-minutes``) holds the model,
the optimiser and the step, and the data order and augmentation of step s depend only on (--seed, s). A
folder that already holds a finished classifier is left alone, so a chain of runs can be rerun as a whole.
``--probe-seconds S`` only measures training throughput (images/s) for S seconds and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from _common import environment  # noqa: E402
from _training import DATASETS, load_images, seeded  # noqa: E402
from fd_metric import ResNetClassifier, save_classifier  # noqa: E402

from mfd_loss.training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

# flags that define a run: resuming a checkpoint written with other values is an error
IDENTITY = ("dataset", "widths", "epochs", "batch_size", "lr", "momentum", "weight_decay", "label_smoothing",
            "warmup", "seed", "train_limit")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="cifar10", help="data set (28x28 ones padded to 32x32)")
    p.add_argument("--data-dir", default=None, help="folder holding cifar10/ and mnist/ (default: $MFD_DATA_DIR or shared/data)")
    p.add_argument("--out", required=True, help="output folder (model.safetensors, config.json, CARD.md)")
    p.add_argument("--name", default=None, help="network name in the metric label FD_<name> (default: resnet-<dataset>)")
    p.add_argument("--widths", default="32,64,128,256", help="channels of the stem and the three stages")
    p.add_argument("--epochs", type=int, default=16, help="passes over the training split")
    p.add_argument("--batch-size", type=int, default=256, help="images per SGD step")
    p.add_argument("--lr", type=float, default=0.2, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--momentum", type=float, default=0.9, help="Nesterov momentum")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay")
    p.add_argument("--label-smoothing", type=float, default=0.2, help="label smoothing of the cross-entropy")
    p.add_argument("--warmup", type=float, default=0.2, help="fraction of the steps with a linear warm-up")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and augmentation")
    p.add_argument("--train-limit", type=int, default=0, help="use only the first N training images (0: all; smoke tests)")
    p.add_argument("--test-limit", type=int, default=0, help="use only the first N test images (0: all; smoke tests)")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, help="minutes between checkpoints")
    p.add_argument("--probe-seconds", type=float, default=0.0, help="only measure images/s for this long; write nothing")
    p.add_argument("--device", default="cpu", help="training device")
    args = p.parse_args(argv)
    args.widths = [int(v) for v in args.widths.split(",")]
    if args.epochs < 1 or args.batch_size < 1 or not 0 <= args.warmup < 1:
        p.error("--epochs and --batch-size must be positive and --warmup in [0, 1)")
    return args


def augment(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``pad`` px (reflect padding, then a per-image random crop) and, with ``flip``,
    a horizontal flip of a random half of the batch. x: (N, C, H, W) float; returns the same shape."""
    n, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


def learning_rate(step: int, total: int, peak: float, warmup: float) -> float:
    """One-cycle schedule: linear from 0 to ``peak`` over the first ``warmup`` share of steps, then linear to 0."""
    rise = max(1, round(warmup * total))
    return peak * step / rise if step < rise else peak * (total - step) / max(1, total - rise)


@torch.no_grad()
def accuracy(model: ResNetClassifier, images: torch.Tensor, labels: torch.Tensor, flip_tta: bool) -> float:
    """Share of correct test predictions; with ``flip_tta`` the logits of the image and its mirror are summed."""
    model.eval()
    correct = 0
    for i in range(0, images.shape[0], 500):
        x = images[i:i + 500].float() / 127.5 - 1
        logits = model(x) + (model(x.flip(-1)) if flip_tta else 0)
        correct += int((logits.argmax(1) == labels[i:i + 500]).sum())
    return correct / images.shape[0]


def write_card(out: Path, config: dict) -> None:
    a, r = config["architecture"], config["recipe"]
    acc = f"{100 * config['test_accuracy']:.2f} %"
    if config.get("test_accuracy_flip_tta") is not None:
        acc += f" ({100 * config['test_accuracy_flip_tta']:.2f} % with flip test-time augmentation)"
    (out / "CARD.md").write_text(
        f"# FD_{config['name']}: the feature network of the benchmarks' Fréchet distance\n\n"
        f"- data: {config['dataset']} train split ({config['train_images']} images), "
        f"test accuracy on the test split ({config['test_images']} images): {acc}\n"
        f"- network: ResNetClassifier widths {a['widths']}, {config['parameters']} parameters; features: the "
        f"{a['widths'][-1]}-d global max-pool of the last stage\n"
        f"- recipe: {r['epochs']} epochs, batch {r['batch_size']}, SGD-Nesterov (momentum {r['momentum']}), "
        f"one-cycle lr peak {r['lr']} ({r['warmup']:.0%} warm-up, linear decay), weight decay {r['weight_decay']}, "
        f"label smoothing {r['label_smoothing']}, augmentation: {r['augmentation']}, seed {r['seed']}\n"
        f"- train time: {config['train_seconds'] / 60:.1f} min on {config['environment']['device_name']} "
        f"({config['environment']['torch_threads']} thread)\n"
        f"- code: git commit {config['environment']['git_commit']}\n"
        f"- weights: model.safetensors (float16), SHA-256 {config['sha256']}\n\n"
        f"Report distances in these features as FD_{config['name']}, never as FID (not Inception features, "
        f"not comparable to published numbers).\n")


def main(args: argparse.Namespace) -> dict | None:
    out = Path(args.out)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file() and not args.probe_seconds:
        print(f"{out} already holds a classifier; nothing to do")
        return json.loads((out / "config.json").read_text())
    train_x, train_y = load_images(args.dataset, "train", args.data_dir)
    test_x, test_y = load_images(args.dataset, "test", args.data_dir)
    train_x, train_y = train_x[:args.train_limit or None], train_y[:args.train_limit or None]
    test_x, test_y = test_x[:args.test_limit or None], test_y[:args.test_limit or None]
    torch.manual_seed(args.seed)
    model = ResNetClassifier(train_x.shape[1], 10, tuple(args.widths)).to(args.device, memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1]
    other = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": args.weight_decay}, {"params": other, "weight_decay": 0}],
                                lr=0.0, momentum=args.momentum, nesterov=True)
    per_epoch = train_x.shape[0] // args.batch_size
    total = per_epoch * args.epochs
    step, train_seconds, identity = 0, 0.0, {k: getattr(args, k) for k in IDENTITY}
    ckpt = out / "checkpoint.pt"
    if ckpt.is_file() and not args.probe_seconds:
        state = load_checkpoint(ckpt)
        if state["identity"] != identity:
            raise ValueError(f"{ckpt} was written with other settings {state['identity']}; use another --out")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, train_seconds = state["step"], state["train_seconds"]
        print(f"resumed {ckpt} at step {step}/{total}")
    pad, flip = (4, True) if args.dataset == "cifar10" else (2, False)
    started, last_save, losses = time.monotonic(), time.monotonic(), []
    while step < total:
        epoch, index = divmod(step, per_epoch)
        order = torch.randperm(train_x.shape[0], generator=seeded(args.seed, 1, epoch))
        idx = order[index * args.batch_size:(index + 1) * args.batch_size]
        x = augment(train_x[idx].float() / 127.5 - 1, pad, flip, seeded(args.seed, 2, step))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, total, args.lr, args.warmup)
        model.train()
        loss = F.cross_entropy(model(x.to(args.device, memory_format=torch.channels_last)), train_y[idx].to(args.device), label_smoothing=args.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        losses.append(loss.item())
        elapsed = time.monotonic() - started
        if args.probe_seconds and elapsed > args.probe_seconds:
            print(f"probe: {step * args.batch_size / elapsed:.1f} images/s over {step} steps (widths {args.widths})")
            return None
        if step % 50 == 0 or step == total:
            print(f"step {step}/{total} epoch {step / per_epoch:.2f} loss {sum(losses) / len(losses):.4f} "
                  f"{(train_seconds + elapsed) / 60:.1f} min", flush=True)
            losses = []
        if time.monotonic() - last_save > 60 * args.checkpoint_minutes and step < total:
            save_checkpoint(ckpt, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                                   "train_seconds": train_seconds + elapsed, "identity": identity})
            last_save = time.monotonic()
    train_seconds += time.monotonic() - started
    config = {
        "name": args.name or f"resnet-{args.dataset}", "dataset": args.dataset,
        "test_accuracy": accuracy(model, test_x, test_y, flip_tta=False),
        "test_accuracy_flip_tta": accuracy(model, test_x, test_y, flip_tta=True) if flip else None,
        "train_images": train_x.shape[0], "test_images": test_x.shape[0],
        "parameters": sum(p.numel() for p in model.parameters()), "train_seconds": round(train_seconds, 1),
        "recipe": {**{k: getattr(args, k) for k in IDENTITY if k not in ("dataset", "widths")},
                   "augmentation": f"translate {pad} px" + (", horizontal flip" if flip else "")},
        "environment": environment(torch.device(args.device)),
    }
    save_classifier(model.cpu(), out, config)
    config = json.loads((out / "config.json").read_text())
    write_card(out, config)
    ckpt.unlink(missing_ok=True)
    print(f"test accuracy {config['test_accuracy']:.4f}; saved {out} (metric label FD_{config['name']})")
    return config


if __name__ == "__main__":
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    main(parse_args())
