"""What every benchmark script shares: the record of where a number was measured, result files, tables.

Every result file is JSON with two top-level keys: ``"environment"`` (from :func:`environment`) and
``"config"`` (the script's arguments), plus the script's own results. Files are written atomically, so an
interrupted run never leaves a half-written result behind.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def parse_ints(text: str) -> tuple[int, ...]:
    """``"1,16,64"`` -> ``(1, 16, 64)``."""
    return tuple(int(v) for v in text.split(",") if v.strip())


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def environment(device: torch.device, dtype: torch.dtype | str | None = None) -> dict[str, Any]:
    """Device, dtype, library versions, CPU threads and machine load at the moment of measuring."""
    record: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "versions": {p: _version(p) for p in ("mfd-loss", "torch", "torchvision", "numpy", "lpips", "torchmetrics")},
    }
    if device.type == "cuda":
        record["cuda"] = torch.version.cuda
    return record


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON, atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a result file is as readable as any other file
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats are printed as given (format them before)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def lpips_with_weights(net: str = "vgg"):
    """``(LPIPSDistance, label)`` with the backbone's ImageNet weights if they are cached (never downloads), else
    ``(None, reason)``: the first line of the error, which says where to put the weights."""
    from mfd_loss.consistency import LPIPSDistance

    try:
        return LPIPSDistance(net, pretrained_backbone=True, allow_download=False), f"LPIPS-{net.upper()} (ImageNet weights)"
    except (RuntimeError, ImportError) as err:
        return None, str(err).splitlines()[0]


def better_label(label: str, better: str) -> str:
    """An axis label that says which way is better: ``better_label("FD_cnn", "lower")`` -> "FD_cnn (lower is better)"."""
    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")
    return f"{label} ({better} is better)"


def coincident_series(series: dict[str, list[float]], tol: float = 1e-3) -> dict[str, str]:
    """Map each series that lies on an earlier one (every value within ``tol``) to that earlier series' name.

    A plot draws such a pair so that both stay visible (the earlier one wide and hollow underneath) and says in the
    legend that they coincide (pixel L2 and pseudo-Huber both give a parallel fraction of exactly 0.5).
    """
    names, found = list(series), {}
    for i, name in enumerate(names):
        for earlier in names[:i]:
            a, b = series[name], series[earlier]
            if earlier not in found and len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b)):
                found[name] = earlier
                break
    return found


def pyplot():
    """matplotlib's pyplot with a file-only backend, or an ImportError saying how to install it."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install 'mfd-loss[benchmarks]' (or pass --no-plot)") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def map_record(pretrained: str | os.PathLike) -> dict[str, str]:
    """``{"name", "sha256"}`` of a feature map given by name, Hub id or folder: the SHA-256 of the
    ``model.safetensors`` a result was measured with (every results JSON names its maps this way)."""
    from mfd_loss.hub.pretrained import resolve_pretrained
    from mfd_loss.hub.serialization import WEIGHTS_NAME, sha256_file

    found = resolve_pretrained(pretrained)
    path = found.path / WEIGHTS_NAME if found.path.is_dir() else found.path
    name = str(pretrained)
    if Path(name).exists():  # a local folder: record it relative to the repository, never an absolute path
        name = Path(name).resolve().name
    return {"name": name, "sha256": found.expected_sha256 or sha256_file(path)}
