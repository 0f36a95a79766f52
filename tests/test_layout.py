"""The package layout: imports flow one way, files stay readable, and the 0.2 import paths still work.

The 0.2 names below are the ``__all__`` of each 0.2 module, written out here (not read from the package) so
that a deprecated path that stops working fails this file.
"""

from __future__ import annotations

import ast
import importlib
import pickle
import warnings
from pathlib import Path

import pytest

import mfd_loss
from mfd_loss import _deprecated

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mfd_loss"

# 0.2 module -> (its __all__, where each name lives now).
OLD_MODULES = {
    "mfd_loss.trainer": (["TrainConfig", "RECIPES", "recipe_settings", "default_spec", "default_device",
                          "data_fingerprint", "regression_metrics", "evaluate_feature_map", "train_feature_map",
                          "export_run"], "mfd_loss.training"),
    "mfd_loss.checkpoint": (["atomic_write", "save_checkpoint", "load_checkpoint"], "mfd_loss.training.checkpoint"),
    "mfd_loss.interrupt": (["StopRequested", "exit_status", "stop_reason"], "mfd_loss.training"),
    "mfd_loss.distributed": (["DistributedContext", "init_distributed", "max_over_processes", "GlobalBatchNorm2d",
                              "use_global_batchnorm"], "mfd_loss.training.distributed"),
    "mfd_loss.datasets": (["find_data_dir", "load_cifar10", "load_mnist", "load_sample_images", "to_model_range",
                           "SAMPLE_SETS"], "mfd_loss.training.datasets"),
    "mfd_loss.image_sources": (["ImageTensorDataset", "ImageFolderDataset", "load_array", "open_image_source",
                                "collate_images", "to_model_range", "default_download_dir", "IMAGE_EXTENSIONS"],
                               "mfd_loss.training.image_sources"),
    "mfd_loss.objectives": (["ICT_HUBER_CONSTANT", "DIRECTIONS", "pseudo_huber", "squared_l2", "tangent_loss",
                             "TangentLoss", "ramp", "blend_losses", "LPIPSDistance", "ObjectiveOutput",
                             "ConsistencyObjective", "OBJECTIVES", "build_objective"], "mfd_loss.consistency"),
    "mfd_loss.sampling": (["SOLVERS", "SIGMA_MIN", "edm_sigmas", "ode_step", "heun_sample"], "mfd_loss.consistency"),
    "mfd_loss.pretrained": (["PretrainedSpec", "ResolvedPretrained", "PretrainedReference", "LoadedPretrained",
                             "register_pretrained", "unregister_pretrained", "list_pretrained", "get_pretrained_spec",
                             "resolve_pretrained", "open_pretrained", "load_pretrained", "download_pretrained"],
                            "mfd_loss.hub.pretrained"),
    "mfd_loss.serialization": (["SCHEMA_VERSION", "WEIGHTS_NAME", "CONFIG_NAME", "IntegrityError", "sha256_file",
                                "dumps_config", "read_config", "save_feature_map", "load_feature_map",
                                "register_architectures", "check_finite_weights"], "mfd_loss.hub.serialization"),
    "mfd_loss.hub_download": (["parse_repo_ref", "is_repo_ref", "is_offline", "download_folder", "cached_folder",
                               "verify_hub_file", "hub_content_sha256", "corrupted_message", "library_version"],
                              "mfd_loss.hub.download"),
    "mfd_loss.hub_mixin": (["HubMixin", "FeatureMapHubMixin", "LossHubMixin"], "mfd_loss.hub"),
    "mfd_loss.hub_publish": (["push_folder"], "mfd_loss.hub"),
    "mfd_loss.model_card": (["model_card", "write_model_card", "CARD_MARKER"], "mfd_loss.hub.model_card"),
    "mfd_loss.hub_cli": (["add_parsers"], "mfd_loss.cli.hub"),
    "mfd_loss.demo": (["run_demo", "demo_images"], "mfd_loss.cli.demo"),
}
# 0.2 modules whose name is now a package: the same names, importable without a warning.
SAME_NAME = {
    "mfd_loss.consistency": ["P_MEAN", "P_STD", "SIGMA_DATA", "SIGMA_MAX", "SIGMA_MID", "sample_noise_levels",
                             "r_from_t", "consistency_weight", "Preconditioning", "edm_preconditioning", "EDMDenoiser",
                             "one_step_sample", "two_step_sample", "EDM_P_MEAN", "EDM_P_STD", "edm_loss_weight",
                             "distillation_target"],
    "mfd_loss.hub": ["HubMixin", "FeatureMapHubMixin", "LossHubMixin", "parse_repo_ref", "is_repo_ref", "is_offline",
                     "download_folder", "cached_folder", "verify_hub_file", "corrupted_message", "push_folder",
                     "model_card", "write_model_card"],
    "mfd_loss.cli": ["main", "build_parser", "train_settings"],
}
# 0.2 top-level names no longer in mfd_loss.__all__ -> where they live now.
OLD_TOP_LEVEL = {"download_pretrained": "mfd_loss.hub", "sampling": None, "consistency": None, "diagnostics": None}


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Forget which old paths have warned, so each test sees the first use."""
    monkeypatch.setattr(_deprecated, "_warned", set())


@pytest.mark.parametrize("old", sorted(OLD_MODULES))
def test_old_module_paths_warn_once_and_give_the_same_object(old, fresh_warnings):
    names, new = OLD_MODULES[old]
    module = importlib.import_module(old)
    home = importlib.import_module(new)
    for name in names:
        with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} is deprecated: use mfd_loss\.") as record:
            value = getattr(module, name)
        assert len(record) == 1 and record[0].filename == __file__, name  # one warning, at the caller's line
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            again = getattr(module, name)  # the second use is silent
        assert value is again is getattr(home, name), name


def test_from_import_of_an_old_path_warns_at_the_importing_line(fresh_warnings):
    with pytest.warns(DeprecationWarning, match="use mfd_loss.training.TrainConfig") as record:
        from mfd_loss.trainer import TrainConfig
    assert TrainConfig is mfd_loss.training.config.TrainConfig
    assert [w.filename for w in record] == [__file__]


def test_old_module_reports_a_missing_name():
    module = importlib.import_module("mfd_loss.pretrained")
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018


@pytest.mark.parametrize("package", sorted(SAME_NAME))
def test_modules_that_became_packages_keep_their_names(package):
    module = importlib.import_module(package)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        missing = [name for name in SAME_NAME[package] if not hasattr(module, name)]
    assert not missing


def test_old_top_level_names(fresh_warnings):
    with pytest.warns(DeprecationWarning, match=r"mfd_loss\.download_pretrained is deprecated") as record:
        value = mfd_loss.download_pretrained
    assert len(record) == 1 and value is mfd_loss.hub.download_pretrained
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mfd_loss.download_pretrained is value
        assert mfd_loss.consistency.edm_loss_weight is mfd_loss.consistency.ect.edm_loss_weight
        assert callable(mfd_loss.diagnostics.tangent_alignment)
    with pytest.warns(DeprecationWarning, match=r"mfd_loss\.sampling\.heun_sample is deprecated"):
        assert mfd_loss.sampling.heun_sample is mfd_loss.consistency.sampling.heun_sample
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        mfd_loss.no_such_name  # noqa: B018


def test_a_pickle_naming_an_old_module_loads(fresh_warnings):
    config = mfd_loss.TrainConfig(steps=7)
    data = pickle.dumps(config, protocol=0)
    assert b"mfd_loss.training.config\nTrainConfig" in data
    old = data.replace(b"mfd_loss.training.config\nTrainConfig", b"mfd_loss.trainer\nTrainConfig")
    with pytest.warns(DeprecationWarning, match="mfd_loss.trainer.TrainConfig"):
        assert pickle.loads(old) == config


# Layers from the core outward: a module imports its own layer and those before it, never one after it.
LAYERS = [
    ("mfd_loss._io", "mfd_loss._validation", "mfd_loss.perturbations", "mfd_loss.distance"),
    ("mfd_loss.hub",),
    ("mfd_loss.feature_maps", "mfd_loss.loss", "mfd_loss.diagnostics"),
    ("mfd_loss.training", "mfd_loss.consistency"),
    ("mfd_loss.cli",),
]
AGGREGATORS = {"mfd_loss", "mfd_loss._deprecated"}  # the top level re-exports every layer


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> tuple[int, str]:
    for index, group in enumerate(LAYERS):
        for prefix in group:
            if module == prefix or module.startswith(prefix + "."):
                return index, prefix
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py")


def _package_imports(source: str, name: str, is_package: bool = False) -> set[str]:
    """Absolute names of the mfd_loss modules that module ``name`` imports (at the top or inside functions)."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [target] + ([f"{target}.{a.name}" for a in node.names] if not node.module or node.level else [])
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found |= {t for t in targets if t.split(".")[0] == "mfd_loss" and t != "mfd_loss"}
    return found


def test_imports_flow_from_the_outer_folders_to_the_core():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if name in AGGREGATORS:
            continue
        layer, group = _layer(name)
        for target in _package_imports(path.read_text(encoding="utf-8"), name, path.name == "__init__.py"):
            if any(target == m or target.startswith(m + ".") for m in AGGREGATORS - {"mfd_loss"}) or \
                    not any(target.startswith(p) for g in LAYERS for p in g):
                continue  # a name imported from a module (from .x import name) shows up as x.name
            other, other_group = _layer(target)
            if other > layer or (other == layer == 3 and other_group != group):
                wrong.append(f"{name} imports {target}")
    assert not wrong, "imports against the flow cli -> training/consistency -> core -> hub:\n" + "\n".join(wrong)


def test_import_checker_resolves_relative_imports():
    source = "from ..training import loop\ndef f():\n    from .download import x\n"
    assert _package_imports(source, "mfd_loss.hub.probe") >= {"mfd_loss.training.loop", "mfd_loss.hub.download"}
    assert _package_imports("from . import x\n", "mfd_loss.cli", is_package=True) == {"mfd_loss.cli", "mfd_loss.cli.x"}
    assert _layer("mfd_loss.hub.probe")[0] < _layer("mfd_loss.training.loop")[0]


def test_files_fit_in_one_sitting():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, f"files over 400 lines in mfd_loss/: {long}"


def test_benchmark_scripts_fit_in_one_sitting():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "benchmarks").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450}
    assert not long, f"files over 450 lines in benchmarks/: {long}"
