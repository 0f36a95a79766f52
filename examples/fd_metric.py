"""Fréchet distance of generated images against a real split, through torchmetrics.

The field's number is FID: the Fréchet distance between Inception-v3 pool features of real and generated
images. Inception weights cannot always be downloaded; then this module uses a small classifier trained by
``benchmarks/fd_classifier.py`` on the same data set and reports the number as ``FD_<network>``, never
as FID (the two are not comparable). The feature network is never the MFD feature map itself: a model trained
against a metric's network would be graded by its own teacher.

Both paths compute the distance with ``torchmetrics.image.fid.FrechetInceptionDistance`` (which takes a
custom ``feature`` module), so the statistics, the matrix square root and the DDP reduction are the
library's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mfd_loss.hub.serialization import sha256_file as file_sha256  # noqa: F401 (the benchmarks use this name)
from mfd_loss.training.checkpoint import atomic_write

__all__ = ["ResNetClassifier", "save_classifier", "load_classifier", "file_sha256", "inception_available", "FrechetDistance"]

CLASSIFIER_WEIGHTS = "model.safetensors"
CLASSIFIER_CONFIG = "config.json"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # the file torch-fidelity caches


class ResNetClassifier(nn.Module):
    """A ResNet-9-style classifier for 32x32 images whose globally max-pooled last stage gives the
    Fréchet-distance features (the layout of Page's fast CIFAR-10 ResNet and of airbench, written here).

    stem conv -> 3 stages of [conv, 2x2 max-pool, BatchNorm, GELU] each followed by a residual pair of
    [conv, BatchNorm, GELU] -> global max-pool (the features) -> linear layer scaled by 1/8 (the logits).

    Args:
        in_channels: 3 (CIFAR-10) or 1 (MNIST / Fashion-MNIST padded to 32x32).
        num_classes: number of classes.
        widths: channels of the stem and of the three stages; the features have ``widths[-1]`` entries.

    Shape:
        input: (N, C, 32, 32) float in [-1, 1]; ``forward`` returns logits (N, num_classes), ``features``
        returns (N, widths[-1]).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"widths must give the stem and three stages (4 numbers), got {widths}")
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "widths": list(widths)}
        self.feature_dim = widths[-1]
        self.stem = _conv_bn(in_channels, widths[0])
        self.stages = nn.ModuleList()
        for cin, cout in zip(widths[:-1], widths[1:]):
            down = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2),
                                 nn.BatchNorm2d(cout), nn.GELU())
            self.stages.append(nn.ModuleList([down, nn.Sequential(_conv_bn(cout, cout), _conv_bn(cout, cout))]))
        self.classifier = nn.Linear(widths[-1], num_classes, bias=False)

    def features(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for down, residual in self.stages:
            h = down(h)
            h = h + residual(h)
        return h.amax(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x)) / 8


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU())


def save_classifier(model: ResNetClassifier, directory: str | os.PathLike, metadata: dict) -> Path:
    """Write ``model.safetensors`` (float16) + ``config.json`` (architecture, name, data set, accuracy, and the
    weights' SHA-256, the metric's identity in results files) atomically; returns the folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    atomic_write(directory / CLASSIFIER_WEIGHTS, lambda tmp: save_file(state, tmp))
    config = {"architecture": model.config, **metadata, "sha256": file_sha256(directory / CLASSIFIER_WEIGHTS)}
    atomic_write(directory / CLASSIFIER_CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
    return directory


def load_classifier(directory: str | os.PathLike) -> tuple[ResNetClassifier, dict]:
    """Load a classifier saved by :func:`save_classifier` (strictly, in float32), in eval mode and frozen.

    Raises:
        FileNotFoundError: the folder lacks the weights or the config (the message says how to make them).
        ValueError: the weights' SHA-256 differs from the one in config.json.
    """
    directory = Path(directory)
    if not (directory / CLASSIFIER_WEIGHTS).is_file() or not (directory / CLASSIFIER_CONFIG).is_file():
        raise FileNotFoundError(f"no Fréchet-distance classifier in {directory}; train one with "
                                f"python benchmarks/fd_classifier.py --out {directory}")
    config = json.loads((directory / CLASSIFIER_CONFIG).read_text())
    if "sha256" in config and file_sha256(directory / CLASSIFIER_WEIGHTS) != config["sha256"]:
        raise ValueError(f"{directory / CLASSIFIER_WEIGHTS} does not match the SHA-256 in its config.json")
    model = ResNetClassifier(**config["architecture"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(directory / CLASSIFIER_WEIGHTS)).items()}
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False), config


class _ClassifierFeatures(nn.Module):
    """uint8 (N, C, 32, 32) images -> (N, feature_dim) float features, as torchmetrics expects."""

    def __init__(self, classifier: ResNetClassifier):
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        self.num_features = classifier.feature_dim

    def train(self, mode: bool = True) -> "_ClassifierFeatures":
        super().train(mode)
        self.classifier.eval()
        return self

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.classifier.features(images.float() / 127.5 - 1.0)


def inception_available() -> bool:
    """True when torchmetrics can build its Inception-v3 FID network without a download."""
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        return False
    return (Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE).is_file()


class FrechetDistance:
    """Fréchet distance (and optionally KID) of generated images to a fixed set of real images.

    Args:
        network: ``"inception"`` (FID; needs torch-fidelity and its cached weights, 3-channel data only),
            a folder with a classifier from ``benchmarks/fd_classifier.py`` (``FD_<name>``), or ``"auto"``:
            Inception when available, else ``classifier_dir``.
        real_images: (N, C, H, W) uint8 real images (e.g. this process's shard of the test split).
        classifier_dir: the classifier folder used by ``"auto"``.
        device: where features are computed.
        batch_size: images per feature-network call.
        kid_subset_size: also compute the kernel distance (KID, Bińkowski et al. 2018: unbiased squared MMD
            with the cubic polynomial kernel, averaged over 100 random subsets of this size; torchmetrics'
            ``KernelInceptionDistance``) in the same features; None: FD only. Needs at least this many real
            and generated images.

    Attributes:
        name: ``"FID"`` or ``"FD_<network>"``, the label to report the number under (KID: ``"KID_<network>"``).
        config: the classifier's config.json (empty for Inception): name, data set, test accuracy, sha256.

    Raises:
        FileNotFoundError: no usable network (the message says how to train the classifier).
    """

    def __init__(self, network: str, real_images: Tensor, *, classifier_dir: str | os.PathLike | None = None,
                 device: torch.device | str = "cpu", batch_size: int = 500, kid_subset_size: int | None = None):
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        if network == "auto":
            if inception_available() and real_images.shape[1] == 3:
                network = "inception"
            elif classifier_dir is None:
                raise FileNotFoundError("Inception weights are not available and no classifier folder was given")
            else:
                network = str(classifier_dir)
        self.config: dict = {}
        if network == "inception":
            feature: int | nn.Module = 2048
            self.name = "FID"
        else:
            classifier, self.config = load_classifier(network)
            feature = _ClassifierFeatures(classifier)
            self.name = f"FD_{self.config.get('name', Path(network).name)}"
        self.metric = FrechetInceptionDistance(feature=feature, reset_real_features=False, normalize=False).to(device)
        self.kid = None if kid_subset_size is None else KernelInceptionDistance(
            feature=feature, subsets=100, subset_size=kid_subset_size, reset_real_features=False,
            normalize=False).to(device)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._rgb = network == "inception"
        for i in range(0, real_images.shape[0], batch_size):
            self._update(real_images[i:i + batch_size], real=True)

    def _update(self, images: Tensor, real: bool) -> None:
        images = images.to(self.device)
        if self._rgb and images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        self.metric.update(images, real=real)
        if self.kid is not None:
            self.kid.update(images, real=real)

    def add_fake(self, images: Tensor) -> None:
        """Add generated images: float in [-1, 1] (quantised to uint8 like saved PNGs) or uint8."""
        if images.is_floating_point():
            images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        for i in range(0, images.shape[0], self.batch_size):
            self._update(images[i:i + self.batch_size], real=False)

    def scores(self) -> dict[str, float]:
        """``{"fd"}`` (plus ``"kid"``, ``"kid_std"`` when KID is on) over all fakes added since the last call;
        then forgets the fakes (the real statistics are kept)."""
        result = {"fd": float(self.metric.compute())}
        self.metric.reset()
        if self.kid is not None:
            mean, std = self.kid.compute()
            result.update(kid=float(mean), kid_std=float(std))
            self.kid.reset()
        return result

    def compute(self) -> float:
        """The Fréchet distance over all fakes added since the last call (the real statistics are kept); then resets."""
        return self.scores()["fd"]
