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
# Subpackages and what each exports: a name that disappears from one fails test_subpackage_surfaces.
SUBPACKAGES = {
    "hub": ("list_pretrained", "load_pretrained", "download_pretrained", "register_pretrained", "unregister_pretrained",
            "get_pretrained_spec", "PretrainedSpec", "save_feature_map", "load_feature_map", "IntegrityError",
            "sha256_file", "HubMixin", "FeatureMapHubMixin", "LossHubMixin", "parse_repo_ref", "is_repo_ref",
            "is_offline", "download_folder", "cached_folder", "verify_hub_file", "corrupted_message", "push_folder",
            "model_card", "write_model_card"),
    "training": ("TrainConfig", "RECIPES", "recipe_settings", "default_spec", "default_device", "train_feature_map",
                 "evaluate_feature_map", "regression_metrics", "format_r2", "export_run", "data_fingerprint",
                 "open_image_source", "ImageFolderDataset", "ImageTensorDataset", "load_array", "collate_images",
                 "load_sample_images", "load_cifar10", "load_mnist", "to_model_range", "save_checkpoint",
                 "load_checkpoint", "StopRequested", "exit_status", "stop_reason"),
    "consistency": ("P_MEAN", "P_STD", "SIGMA_DATA", "SIGMA_MAX", "SIGMA_MID", "sample_noise_levels", "r_from_t",
                    "consistency_weight", "Preconditioning", "edm_preconditioning", "EDMDenoiser", "one_step_sample",
                    "two_step_sample", "EDM_P_MEAN", "EDM_P_STD", "edm_loss_weight", "distillation_target",
                    "ICT_HUBER_CONSTANT", "DIRECTIONS", "pseudo_huber", "squared_l2", "tangent_loss", "TangentLoss",
                    "ramp", "blend_losses", "LPIPSDistance", "ObjectiveOutput", "ConsistencyObjective", "OBJECTIVES",
                    "build_objective", "SOLVERS", "SIGMA_MIN", "edm_sigmas", "ode_step", "heun_sample"),
    "cli": ("main", "build_parser", "train_settings"),
    "diagnostics": ("NUISANCE_DIRECTIONS", "nuisance_tangents", "parallel_energy_fraction", "loss_gradient",
                    "tangent_alignment", "controlled_displacement", "random_init_like"),
    "feature_maps": ("FeatureMapConfig", "TapFeatureMap", "VGGFeatureMap", "ResNetFeatureMap", "build_feature_map"),
    "perturbations": ("Perturbations", "LabelSpec", "OpSpec", "label_spec", "register_perturbation",
                      "unregister_perturbation", "PRESETS", "PIPELINE_VERSION"),
}


def test_every_public_name_exists_and_is_exported():
    assert len(mfd_loss.__all__) <= 20, "the top level keeps at most 20 names; export others from a subpackage"
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


def test_subpackage_surfaces():
    import importlib

    for package, names in SUBPACKAGES.items():
        module = importlib.import_module(f"mfd_loss.{package}")
        missing = [name for name in names if name not in module.__all__ or not hasattr(module, name)]
        assert not missing, f"dropped from mfd_loss.{package}: {missing}"


def test_public_submodules_are_exported():
    import types

    for name in ("consistency", "diagnostics", "hub"):
        assert isinstance(getattr(mfd_loss, name), types.ModuleType), name
    assert callable(mfd_loss.diagnostics.tangent_alignment)
    assert {"tangent_alignment", "random_init_like"} <= set(mfd_loss.diagnostics.__all__)
    assert callable(mfd_loss.diagnostics.random_init_like)
