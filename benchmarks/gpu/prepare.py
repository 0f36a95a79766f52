"""Pack what the one-GPU check (``benchmarks/gpu/run.py``) needs into one git-ignored folder, and print its size.

The GPU machine this project borrows has no network and receives at most 64 MiB: the working tree (tracked and
untracked-not-ignored files) plus the folders named in the device tool's ``carry``. This script, run on any
machine with the project's data, writes ``benchmarks/gpu/pack/`` (ignored by git):

* ``data/cifar10/cifar10_train_jpeg.npz``: the first N CIFAR-10 training images in the project's archive format
  (JPEG bytes, offsets, labels, classes; :func:`mfd_loss.training.datasets.load_cifar10` reads it), N as large as fits,
  all 50,000 when they do. JPEG bytes are about 0.9 KB an image against 3 KB decoded, so the archive format
  carries over three times as many images as decoded uint8 would;
* ``data/cifar10/cifar10_test_jpeg.npz``: the test split (all 10,000 images by default) for per-label R^2;
* ``wheels/lpips-*.whl``: LPIPS, which the GPU machine lacks (``pip download lpips --no-deps``);
* ``manifest.json``: what is in it, sizes and SHA-256 digests.

Usage (from the repository root)::

    python benchmarks/gpu/prepare.py                 # then: device tool run, carry=["benchmarks/gpu/pack"]
    python benchmarks/gpu/prepare.py --smoke --pack /tmp/pack   # CI: 256 images made from the packaged sample

``--smoke`` needs neither the data folder nor the network: its images are the 64 real CIFAR-10 test images
shipped with the package and their mirror images, JPEG-encoded; no wheel is fetched.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the project from this checkout, installed or not
DEFAULT_PACK = ROOT / "benchmarks" / "gpu" / "pack"
MIB = 2**20
LIMIT_MIB = 64.0  # what the device tool lets travel: working tree + carried folders


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of what travels besides the pack: files git tracks plus untracked files it does not ignore."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                                 capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise RuntimeError(f"cannot list the working tree with git ({err}); run from a git checkout") from None
    files = {root / name for name in listing.decode().split("\0") if name}
    return sum(f.stat().st_size for f in files if f.is_file() and not f.is_symlink())


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def write_archive(path: Path, blob: np.ndarray, offsets: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> None:
    """An archive in the format of the project's ``cifar10_{split}_jpeg.npz`` (uncompressed: JPEG does not compress)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, jpeg=blob, offsets=offsets.astype(np.int64), labels=labels.astype(np.uint8), classes=classes)


def prefix(archive: Path, count: int | None = None, max_bytes: int | None = None):
    """The first images of an archive: ``count`` of them, or as many as fit in ``max_bytes`` of JPEG data."""
    with np.load(archive) as z:
        blob, offsets, labels, classes = z["jpeg"], z["offsets"], z["labels"], z["classes"]
    n = len(offsets) - 1
    if count is not None:
        n = min(n, count)
    if max_bytes is not None:
        n = min(n, int(np.searchsorted(offsets, max_bytes, side="right")) - 1)
    if n < 1:
        raise ValueError(f"not even one image of {archive} fits; free space in the tree or lower --margin-mib")
    return blob[:offsets[n]], offsets[:n + 1], labels[:n], classes


def smoke_archives() -> tuple[tuple, tuple]:
    """(train, test) archives of 256 JPEG images each: the packaged 64 test images and their flips."""
    import torch
    from PIL import Image

    from mfd_loss.training.datasets import load_sample_images

    images, labels = load_sample_images()
    variants = [images, images.flip(-1), images.flip(-2), images.flip(-1, -2)]
    images, labels = torch.cat(variants), labels.repeat(len(variants))
    chunks = []
    for image in images.permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        chunks.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in chunks])])
    classes = np.array(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"])
    archive = (np.concatenate(chunks), offsets, labels.numpy(), classes)
    return archive, archive


def fetch_wheel(dest: Path, wheel: str | None) -> Path:
    """The LPIPS wheel: copied from ``wheel`` when given, else ``pip download`` of the installed version."""
    dest.mkdir(parents=True, exist_ok=True)
    if wheel:
        target = dest / Path(wheel).name
        shutil.copyfile(wheel, target)
        return target
    try:
        from importlib.metadata import version

        spec = f"lpips=={version('lpips')}"
    except Exception:  # not installed here: the newest release
        spec = "lpips"
    cmd = [sys.executable, "-m", "pip", "download", spec, "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    found = sorted(dest.glob("lpips-*.whl"))
    if result.returncode or not found:
        raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{result.stderr.strip()[-2000:]}\n"
                           "pass --wheel PATH to an lpips wheel, or --no-wheel (LPIPS cases are then left out)")
    return found[-1]


def prepare(pack: Path, *, data_dir: str | None, smoke: bool, margin_mib: float, train_images: int | None,
            test_images: int, wheel: str | None, no_wheel: bool) -> dict:
    if pack.exists():
        shutil.rmtree(pack)
    cifar = pack / "data" / "cifar10"
    cifar.mkdir(parents=True)
    tree = tree_bytes()
    if not no_wheel and not smoke:
        fetch_wheel(pack / "wheels", wheel)
    if smoke:
        train, test = smoke_archives()
        source = "the package's 64 CIFAR-10 test images and their flips (smoke)"
    else:
        from mfd_loss.training.datasets import find_data_dir

        folder = find_data_dir(data_dir) / "cifar10"
        test = prefix(folder / "cifar10_test_jpeg.npz", count=test_images)
        per_image = 9  # an int64 offset and a uint8 label beside each image's JPEG bytes
        overhead = 64 * 1024 + per_image * 50_001  # npz headers, the train offsets and labels, the manifest
        room = int((LIMIT_MIB - margin_mib) * MIB) - tree - folder_bytes(pack) - test[0].nbytes \
            - test[1].nbytes - test[2].nbytes - overhead
        train = prefix(folder / "cifar10_train_jpeg.npz", count=train_images, max_bytes=room)
        source = str(folder)
    write_archive(cifar / "cifar10_train_jpeg.npz", *train)
    write_archive(cifar / "cifar10_test_jpeg.npz", *test)
    files = {str(p.relative_to(pack)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(pack.rglob("*")) if p.is_file()}
    manifest = {
        "source": source, "smoke": smoke,
        "train_images": len(train[1]) - 1, "test_images": len(test[1]) - 1,
        "wheels": sorted(p.name for p in (pack / "wheels").glob("*.whl")) if (pack / "wheels").is_dir() else [],
        "files": files,
    }
    (pack / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    manifest["pack_mib"] = folder_bytes(pack) / MIB
    manifest["tree_mib"] = tree / MIB
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pack", type=Path, default=DEFAULT_PACK, help="folder to write (replaced)")
    p.add_argument("--data-dir", default=None, help="folder holding cifar10/ (default: $MFD_DATA_DIR or shared/data)")
    p.add_argument("--margin-mib", type=float, default=3.0,
                   help="room left under the 64 MiB for files added to the tree after packing")
    p.add_argument("--train-images", type=int, default=None, help="at most this many training images")
    p.add_argument("--test-images", type=int, default=10_000, help="test images for per-label R^2")
    p.add_argument("--wheel", default=None, help="an lpips wheel file to use instead of pip download")
    p.add_argument("--no-wheel", action="store_true", help="carry no LPIPS wheel (LPIPS cost cases are left out)")
    p.add_argument("--smoke", action="store_true", help="tiny pack from the packaged sample images (CI)")
    args = p.parse_args(argv)
    manifest = prepare(args.pack.resolve(), data_dir=args.data_dir, smoke=args.smoke, margin_mib=args.margin_mib,
                       train_images=args.train_images, test_images=args.test_images, wheel=args.wheel,
                       no_wheel=args.no_wheel)
    total = manifest["pack_mib"] + manifest["tree_mib"]
    print(f"{args.pack}: {manifest['pack_mib']:.1f} MiB ({manifest['train_images']} train + "
          f"{manifest['test_images']} test images, wheels: {', '.join(manifest['wheels']) or 'none'}); "
          f"working tree {manifest['tree_mib']:.1f} MiB; together {total:.1f} of {LIMIT_MIB:.0f} MiB")
    if total > LIMIT_MIB:
        print("too large for the device tool: shrink with --train-images", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
