"""The public API surface: removing or renaming a public name must fail this test."""

from __future__ import annotations

import inspect

import mfd_loss

PUBLIC = {
    "ManifoldFeatureDistance": "class",
    "MFD": "class",
    "manifold_feature_distance": "function",
    "InputRangeWarning": "class",
    "VGGFeatureMap": "class",
    "FeatureMapConfig": "class",
    "build_feature_map": "function",
    "Perturbations": "class",
    "LabelSpec": "class",
    "label_spec": "function",
    "list_pretrained": "function",
    "load_pretrained": "function",
    "save_feature_map": "function",
    "load_feature_map": "function",
    "TrainConfig": "class",
    "train_feature_map": "function",
    "load_sample_images": "function",
    "tangent_loss": "function",
    "TangentLoss": "class",
    "pseudo_huber": "function",
}
MODULES = ("consistency", "diagnostics", "sampling")


def test_every_public_name_exists_and_is_exported():
    missing = [name for name in PUBLIC if name not in mfd_loss.__all__]
    assert not missing, f"dropped from mfd_loss.__all__: {missing}"
    for name, kind in PUBLIC.items():
        obj = getattr(mfd_loss, name)
        assert (inspect.isclass(obj) if kind == "class" else inspect.isfunction(obj)), name


def test_all_resolves_and_star_import_works():
    for name in mfd_loss.__all__:
        assert hasattr(mfd_loss, name), name
    namespace: dict = {}
    exec("from mfd_loss import *", namespace)
    assert set(PUBLIC) <= set(namespace)


def test_aliases_and_version():
    assert mfd_loss.MFD is mfd_loss.ManifoldFeatureDistance
    assert issubclass(mfd_loss.InputRangeWarning, UserWarning)
    assert isinstance(mfd_loss.__version__, str) and mfd_loss.__version__.count(".") >= 1


def test_public_submodules_are_exported():
    import types

    for name in MODULES:
        assert name in mfd_loss.__all__ and isinstance(getattr(mfd_loss, name), types.ModuleType), name
    assert callable(mfd_loss.diagnostics.tangent_alignment)
    assert {"tangent_alignment", "random_init_like"} <= set(mfd_loss.diagnostics.__all__)
    assert callable(mfd_loss.diagnostics.random_init_like)
