"""Self-supervised perturbations whose parameters a feature map learns to regress (METHOD.md Sec. 3)."""

from .custom import CustomPerturbation, register_perturbation, unregister_perturbation
from .colour import ColourParams, apply_colour, sample_colour
from .degradation import DegradationParams, apply_degradation, gaussian_blur, sample_degradation
from .geometric import GeometricParams, apply_geometric, sample_geometric
from .pipeline import PerturbationParams, Perturbations
from .spec import OPS, PIPELINE_VERSION, PRESETS, LabelSpec, OpSpec, label_spec

__all__ = [
    "OPS", "PIPELINE_VERSION", "PRESETS", "CustomPerturbation", "register_perturbation", "unregister_perturbation", "LabelSpec", "OpSpec", "label_spec",
    "Perturbations", "PerturbationParams",
    "GeometricParams", "sample_geometric", "apply_geometric",
    "ColourParams", "sample_colour", "apply_colour",
    "DegradationParams", "sample_degradation", "apply_degradation", "gaussian_blur",
]
