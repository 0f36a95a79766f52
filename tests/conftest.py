"""Shared fixtures: the 64 real CIFAR-10 test images shipped with the package and tiny feature maps.

Every test uses VGG11 at 1/8 width (a few hundred thousand parameters) so the suite runs in about a
minute on a 2-core CPU.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from mfd_loss import MFD, FeatureMapConfig, VGGFeatureMap, load_sample_images
from mfd_loss.training.datasets import to_model_range

TINY = {"arch": "vgg11", "width": 0.125}


def pytest_configure(config):
    # Tiny convolutions gain nothing from intra-op threads, and on a shared 2-core machine thread
    # contention makes them up to 50x slower; one thread keeps the suite fast and deterministic.
    torch.set_num_threads(1)


def load_script(path: str | Path, name: str | None = None) -> ModuleType:
    """A script outside the package (``benchmarks/*.py``, ``benchmarks/gpu/*.py``) imported from its file.

    Registered in ``sys.modules`` under ``name`` (default: the file's stem), so that dataclasses, pickling and
    forked children resolve it, and loaded once: later calls with the same name and file return that module.
    Tests import it with ``from conftest import load_script``.
    """
    path = Path(path).resolve()
    name = name or path.stem
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) and Path(loaded.__file__).resolve() == path:
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def make_tiny_map(seed: int = 0, **overrides) -> VGGFeatureMap:
    """A freshly initialised VGG11 at 1/8 width (train mode, trainable), seeded without touching global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VGGFeatureMap(FeatureMapConfig(**{**TINY, **overrides}))


@pytest.fixture(scope="session")
def sample_uint8() -> torch.Tensor:
    """(64, 3, 32, 32) uint8 real CIFAR-10 test images."""
    images, labels = load_sample_images()
    assert images.dtype == torch.uint8 and tuple(images.shape) == (64, 3, 32, 32)
    assert labels.shape == (64,)
    return images


@pytest.fixture(scope="session")
def _real_images(sample_uint8) -> torch.Tensor:
    return to_model_range(sample_uint8)


@pytest.fixture
def images(_real_images) -> torch.Tensor:
    """(64, 3, 32, 32) float32 real images in [-1, 1]; a fresh copy per test."""
    return _real_images.clone()


@pytest.fixture(scope="session")
def _frozen_map() -> VGGFeatureMap:
    return make_tiny_map(seed=0).eval().requires_grad_(False)


@pytest.fixture
def tiny_map(_frozen_map) -> VGGFeatureMap:
    """A tiny frozen feature map in eval mode (shared; tests must not modify it)."""
    return _frozen_map


@pytest.fixture
def loss_fn(_frozen_map) -> MFD:
    """MFD (group form, reduction 'none') on the tiny map."""
    return MFD(pretrained=None, feature_map=_frozen_map)


@pytest.fixture
def make_map():
    """Factory for fresh tiny maps: make_map(seed=0, **FeatureMapConfig overrides)."""
    return make_tiny_map
