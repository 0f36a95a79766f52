"""The label specification: which perturbations a feature map regresses, in which order.

The full set and its label definitions follow Kim, Cha & Ye, "Align Your Tangent" (arXiv 2510.00658),
Sec. 3 / App. B, as restated in the project's METHOD.md, Sec. 3. A :class:`LabelSpec` is stored in every
exported ``config.json`` so that a trained feature map always travels with the meaning of its outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

__all__ = ["OpSpec", "LabelSpec", "OPS", "PRESETS", "PIPELINE_VERSION", "label_spec"]

_INF = math.inf

#: Version of the perturbation conventions this package implements (METHOD.md Sec. 3). 1: mfd-loss 0.1
#: (bicubic resampling that blurred at the identity, edge-repeating padding, contrast about the image mean,
#: rotation sign reversed, aniso stretch before rotation, mixup with the partner's clean image); 2: the authors'
#: conventions, since mfd-loss 0.2, except the resampling filter, which was the time reverse of theirs (every
#: scale, rotation and stretch came out as their warp conjugated by a 180-degree turn); 3: the authors' filter
#: orientation too, since mfd-loss 0.3. A map's labels mean what its pipeline version says, so the version travels
#: in every label spec (``config.json``, checkpoints); files without one are version 1. A map trained on an older
#: pipeline still serves as a loss; only training and resuming need the current one.
PIPELINE_VERSION = 3


@dataclass(frozen=True)
class OpSpec:
    """One perturbation and the label entries it contributes.

    Attributes:
        name: identifier used in presets and probability dictionaries (e.g. ``"rotation"``).
        group: ``"geometric"``, ``"colour"``, ``"degradation"`` or ``"custom"``.
        labels: names of the label entries, in order.
        ranges: closed value range ``(low, high)`` of each label entry; ``inf`` for unbounded
            (normally distributed) parameters. A switched-off op has label entries exactly 0.
        description: the parameter distribution, in words.
        needs_rgb: True when the op is only defined for 3-channel RGB images.
    """

    name: str
    group: str
    labels: tuple[str, ...]
    ranges: tuple[tuple[float, float], ...]
    description: str
    needs_rgb: bool = False


#: Every perturbation, in the canonical label order of the paper's full 15-label set.
OPS: dict[str, OpSpec] = {
    op.name: op
    for op in (
        OpSpec("scale", "geometric", ("scale_w",), ((-_INF, _INF),),
               "w ~ N(0,1); isotropic scale factor 2^(0.2 w)"),
        OpSpec("rotation", "geometric", ("rotation_cos_minus_1", "rotation_sin"), ((-2.0, 0.0), (-1.0, 1.0)),
               "theta ~ U(-pi, pi); labels cos(theta) - 1, sin(theta)"),
        OpSpec("anisotropic_scale", "geometric", ("aniso_w_cos_r", "aniso_w_sin_r"), ((-_INF, _INF), (-_INF, _INF)),
               "w ~ N(0,1); factors (2^(0.2 w), 2^(-0.2 w)) along axes rotated by r ~ U(-pi, pi) "
               "with probability 0.5, else r = 0; labels w cos r, w sin r"),
        OpSpec("translation", "geometric", ("translate_x", "translate_y"), ((-_INF, _INF), (-_INF, _INF)),
               "(wx, wy) ~ N(0,1)^2; shift = w * 0.125 * image size (pixels)"),
        OpSpec("brightness", "colour", ("brightness_w",), ((-_INF, _INF),),
               "w ~ N(0,1); add 0.2 w to every channel (input units of [-1, 1])"),
        OpSpec("contrast", "colour", ("contrast_w",), ((-_INF, _INF),),
               "w ~ N(0,1); multiply the [-1, 1] image by 2^(0.5 w) (pivot 0 = mid-grey)"),
        OpSpec("hue", "colour", ("hue_cos_minus_1", "hue_sin"), ((-2.0, 0.0), (-1.0, 1.0)),
               "theta ~ U(-pi, pi); rotation about the grey (luma) axis", needs_rgb=True),
        OpSpec("saturation", "colour", ("saturation_w",), ((-_INF, _INF),),
               "w ~ N(0,1); chroma scaled by 2^w", needs_rgb=True),
        OpSpec("blur", "degradation", ("blur_sigma",), ((0.0, 3.0),),
               "sigma ~ U(0, 3], sigma > 0; separable Gaussian blur, reflect padding"),
        OpSpec("mixup", "degradation", ("mixup_lambda",), ((0.0, 0.5),),
               "lambda = 0.5 * Beta(1, 3); x <- x + lambda (x_partner - x), both after warp, colour and blur; "
               "the partner is another sample"),
        OpSpec("noise", "degradation", ("noise_std",), ((0.0, 0.5),),
               "s ~ U(0, 0.5); x <- x + s n, n Gaussian rescaled to per-pixel RMS exactly 1"),
    )
}

_GEOMETRIC = ("scale", "rotation", "anisotropic_scale", "translation")
_COLOUR = ("brightness", "contrast", "hue", "saturation")
_DEGRADATION = ("blur", "mixup", "noise")

#: Named subsets: the paper's ablation (label counts 7, 12, 10, 3, 15) and ``"grayscale"`` (12 labels: no
#: hue or saturation, for 1-channel images).
PRESETS: dict[str, tuple[str, ...]] = {
    "geometric": _GEOMETRIC,
    "geometric+colour": _GEOMETRIC + _COLOUR,
    "geometric+degradation": _GEOMETRIC + _DEGRADATION,
    "degradation": _DEGRADATION,
    "all": _GEOMETRIC + _COLOUR + _DEGRADATION,
    "grayscale": _GEOMETRIC + ("brightness", "contrast") + _DEGRADATION,
}


@dataclass(frozen=True)
class LabelSpec:
    """An ordered set of perturbations; defines the feature map's K regression outputs.

    Ops always appear in the canonical order of :data:`OPS`, whatever order they were given in,
    so two specs with the same ops are equal and produce the same label layout.

    Args:
        ops: names of the perturbations (keys of :data:`OPS`).
        pipeline: the perturbation conventions the labels were produced with (:data:`PIPELINE_VERSION`);
            :class:`~mfd_loss.perturbations.Perturbations` produces only the current one.

    Raises:
        ValueError: an unknown op name, a duplicate, or an empty list.
    """

    ops: tuple[str, ...]
    pipeline: int = PIPELINE_VERSION

    def __post_init__(self) -> None:
        ops = tuple(self.ops)
        unknown = [o for o in ops if o not in OPS]
        if unknown:
            raise ValueError(f"unknown perturbation(s) {unknown}; known: {list(OPS)}. A custom perturbation must be "
                             "registered (mfd_loss.perturbations.register_perturbation) before a spec or a feature "
                             "map that uses it is built or loaded")
        if len(set(ops)) != len(ops):
            raise ValueError(f"duplicate perturbation in {list(ops)}")
        if not ops:
            raise ValueError("a label spec needs at least one perturbation")
        object.__setattr__(self, "ops", tuple(o for o in OPS if o in ops))

    @property
    def labels(self) -> tuple[str, ...]:
        """Names of the K label entries, in output order."""
        return tuple(name for op in self.ops for name in OPS[op].labels)

    @property
    def num_labels(self) -> int:
        """K, the length of the label vector."""
        return len(self.labels)

    @property
    def needs_rgb(self) -> bool:
        """True when some op (hue, saturation) is only defined for RGB images."""
        return any(OPS[op].needs_rgb for op in self.ops)

    def slices(self) -> dict[str, slice]:
        """Position of each op's entries in the label vector."""
        out, start = {}, 0
        for op in self.ops:
            n = len(OPS[op].labels)
            out[op] = slice(start, start + n)
            start += n
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (stored in ``config.json`` next to trained weights).

        Strict JSON has no ``Infinity``: an unbounded end of a label's range is written as ``null``
        (``[null, null]`` for a normally distributed parameter). :meth:`from_dict` reads both that and the
        ``-Infinity`` / ``Infinity`` of files written by mfd-loss 0.1.
        """
        return {
            "ops": list(self.ops),
            "pipeline": self.pipeline,
            "labels": [
                {"name": name, "op": op, "group": OPS[op].group, "range": [_json_bound(lo), _json_bound(hi)]}
                for op in self.ops
                for name, (lo, hi) in zip(OPS[op].labels, OPS[op].ranges)
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LabelSpec":
        """Inverse of :meth:`to_dict`; checks that the stored label names match this version's. A file without
        ``"pipeline"`` was written by mfd-loss 0.1 (pipeline 1).

        Raises:
            ValueError: the stored labels differ from what these ops define here.
        """
        spec = cls(tuple(data["ops"]), pipeline=int(data.get("pipeline", 1)))
        stored = [entry["name"] for entry in data.get("labels", [])]
        if stored and tuple(stored) != spec.labels:
            raise ValueError(
                f"label spec mismatch: the file lists labels {stored} but ops {list(spec.ops)} define "
                f"{list(spec.labels)} in this version of mfd-loss"
            )
        return spec


def _json_bound(value: float) -> float | None:
    """A range end as strict JSON allows it: finite numbers as they are, an unbounded end as None (null)."""
    return float(value) if math.isfinite(value) else None


def label_spec(preset_or_ops: str | Iterable[str] | LabelSpec = "all") -> LabelSpec:
    """Build a :class:`LabelSpec` from a preset name, a list of op names, or a spec.

    Args:
        preset_or_ops: one of :data:`PRESETS` (``"geometric"``, ``"geometric+colour"``,
            ``"geometric+degradation"``, ``"degradation"``, ``"all"``, ``"grayscale"``), or op names.

    Raises:
        ValueError: an unknown preset or op name.

    Examples:
        >>> label_spec("geometric").num_labels
        7
        >>> label_spec("all").labels[:3]
        ('scale_w', 'rotation_cos_minus_1', 'rotation_sin')
    """
    if isinstance(preset_or_ops, LabelSpec):
        return preset_or_ops
    if isinstance(preset_or_ops, str):
        if preset_or_ops not in PRESETS:
            raise ValueError(f"unknown preset {preset_or_ops!r}; choose one of {list(PRESETS)} or pass op names")
        return LabelSpec(PRESETS[preset_or_ops])
    return LabelSpec(tuple(preset_or_ops))
