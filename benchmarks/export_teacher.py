"""Export the EMA weights of a finished EDM teacher (``examples/train_diffusion_model.py``) for committing.

    python benchmarks/export_teacher.py runs/teachers/edm-cifar10/checkpoint.pt --out benchmarks/teachers/cifar10

writes ``model.safetensors`` (the EMA network, float16), ``config.json`` (network flags, data set, steps,
batch, training wall-clock, the last logged Fréchet distance of its Heun samples, git commit, SHA-256) and
``CARD.md``. ``examples/_training.init_weights`` loads such a state dict (``--init``); pass the network flags
recorded in config.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from _common import environment  # noqa: E402
from _training import NETWORK_ARGS  # noqa: E402
from fd_metric import file_sha256  # noqa: E402

from mfd_loss.training.checkpoint import atomic_write, load_checkpoint  # noqa: E402

RECIPE_ARGS = ("dataset", "batch_size", "optimizer", "lr", "lr_warmup", "ema_decay", "sigma_data", "seed", "p_mean",
               "p_std", "xflip")


def export(checkpoint: str | Path, out: str | Path) -> dict:
    """Write the float16 EMA weights, config.json and CARD.md of ``checkpoint`` into ``out``; returns the config.

    Raises:
        FileNotFoundError: no checkpoint. ValueError: the checkpoint records no network flags.
    """
    state = load_checkpoint(checkpoint)
    saved = state.get("args", {})
    if any(k not in saved for k in NETWORK_ARGS):
        raise ValueError(f"{checkpoint} does not record its network flags; pass a train_diffusion_model.py checkpoint")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.half().contiguous() if v.is_floating_point() else v.contiguous() for k, v in state["ema"].items()}
    atomic_write(out / "model.safetensors", lambda tmp: save_file(weights, tmp))
    evals = [h["eval"] for h in state["history"] if "eval" in h]
    last = evals[-1] if evals else {}
    config = {
        "network": {k: saved[k] for k in NETWORK_ARGS}, "recipe": {k: saved.get(k) for k in RECIPE_ARGS},
        "parameters": sum(v.numel() for v in state["ema"].values()), "steps": state["step"],
        "train_seconds": round(state["train_seconds"], 1), "cpu_seconds": round(state.get("cpu_seconds", 0.0), 1),
        "last_eval": {k: v for k, v in last.items() if not k.startswith("grid_")},
        "environment": environment(torch.device("cpu")), "sha256": file_sha256(out / "model.safetensors"),
    }
    grid = Path(last.get("grid_heun", ""))
    if grid.is_file():  # the sample grid of the last evaluation, committed beside the weights
        shutil.copyfile(grid, out / "heun_samples.png")
        config["last_eval"]["grid_heun"] = "heun_samples.png"
    atomic_write(out / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    fd = ", ".join(f"{k} {v:.2f}" for k, v in config["last_eval"].items() if k.startswith(("FD", "FID")))
    n, r = config["network"], config["recipe"]
    (out / "CARD.md").write_text(
        f"# EDM teacher: {r['dataset']}\n\n"
        f"- network: examples/unet.py U-Net, --channels {n['channels']} --channel-mult "
        f"{','.join(map(str, n['channel_mult']))} --num-blocks {n['num_blocks']} --attention "
        f"{','.join(map(str, n['attention'])) or 'none'} --dropout {n['dropout']}; {config['parameters']} parameters; "
        f"EDM preconditioning (sigma_data {r['sigma_data']})\n"
        f"- training: {config['steps']} steps at batch {r['batch_size']}, {r['optimizer']} lr {r['lr']} "
        f"(warm-up {r['lr_warmup']} steps), EMA {r['ema_decay']}, seed {r['seed']}; "
        f"{config['train_seconds'] / 3600:.2f} h training wall-clock on one CPU thread\n"
        f"- quality of its Heun samples (18 steps, 35 evaluations) at the last evaluation: {fd or 'n/a'} "
        f"(grid: heun_samples.png)\n"
        f"- weights: model.safetensors = the EMA network, float16, SHA-256 {config['sha256']}\n"
        f"- exported at git commit {config['environment']['git_commit']}\n")
    return config


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint.pt of train_diffusion_model.py")
    p.add_argument("--out", required=True, help="folder for model.safetensors, config.json, CARD.md")
    args = p.parse_args(argv)
    config = export(args.checkpoint, args.out)
    print(f"exported {args.checkpoint} ({config['steps']} steps) to {args.out}")
    return config


if __name__ == "__main__":
    main()
