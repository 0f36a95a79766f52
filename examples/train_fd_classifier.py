"""Train the small classifier whose features give the Fréchet distance ``FD_<network>`` when Inception weights
are not available (see ``fd_metric.py``).

    python examples/train_fd_classifier.py --dataset cifar10 --out runs/fd-cifar10

Writes ``model.safetensors`` + ``config.json`` (architecture, name, data set, test accuracy) into ``--out``.
The classifier is trained on the train split with random flips and crops and never sees generated images.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fd_metric import SmallCNN, save_classifier  # noqa: E402
from _training import load_images  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=["cifar10", "mnist"], default="cifar10", help="data set (MNIST is padded to 32x32)")
    p.add_argument("--data-dir", default=None, help="folder holding cifar10/ and mnist/ (default: $MFD_DATA_DIR or shared/data)")
    p.add_argument("--out", required=True, help="output folder for model.safetensors + config.json")
    p.add_argument("--name", default=None, help="network name used in the metric label FD_<name> (default: cnn-<dataset>)")
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=64, help="images per step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (cosine decay to 0)")
    p.add_argument("--width", type=int, default=16, help="channels of the first stage")
    p.add_argument("--feature-dim", type=int, default=128, help="size of the feature layer used by the metric")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and data order")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="training device")
    return p.parse_args(argv)


def _augment(x: torch.Tensor, generator: torch.Generator, flip: bool) -> torch.Tensor:
    """Random horizontal flips (CIFAR-10) and a random shift of up to 2 pixels per batch."""
    if flip:
        mask = torch.rand(x.shape[0], generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    dx, dy = torch.randint(-2, 3, (2,), generator=generator).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


@torch.no_grad()
def accuracy(model: SmallCNN, images: torch.Tensor, labels: torch.Tensor, device: str) -> float:
    model.eval()
    correct = 0
    for i in range(0, images.shape[0], 1000):
        x = images[i:i + 1000].to(device).float() / 127.5 - 1
        correct += int((model(x).argmax(1).cpu() == labels[i:i + 1000]).sum())
    return correct / images.shape[0]


def main(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    train_x, train_y = load_images(args.dataset, "train", args.data_dir)
    test_x, test_y = load_images(args.dataset, "test", args.data_dir)
    model = SmallCNN(train_x.shape[1], int(train_y.max()) + 1, args.width, args.feature_dim).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.15)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.monotonic()
    bar = tqdm(range(args.steps), desc="fd classifier", unit="step")
    for step in bar:
        model.train()
        idx = torch.randint(0, train_x.shape[0], (args.batch_size,), generator=generator)
        x = _augment(train_x[idx].float() / 127.5 - 1, generator, flip=args.dataset == "cifar10")
        loss = F.cross_entropy(model(x.to(args.device)), train_y[idx].to(args.device), label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    acc = accuracy(model, test_x, test_y, args.device)
    name = args.name or f"cnn-{args.dataset}"
    metadata = {"name": name, "dataset": args.dataset, "test_accuracy": acc, "steps": args.steps,
                "batch_size": args.batch_size, "seed": args.seed, "train_seconds": round(time.monotonic() - started, 1),
                "purpose": "feature network of the Fréchet distance FD_" + name + " (not Inception; not comparable to FID)"}
    save_classifier(model.cpu(), args.out, metadata)
    print(f"test accuracy {acc:.3f}; saved {args.out} (metric label FD_{name})")
    return metadata


if __name__ == "__main__":
    main(parse_args())
