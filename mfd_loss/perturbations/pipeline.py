"""The composed perturbation pipeline used to train feature maps: sample, apply, label."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
from torch import Tensor

from .colour import ColourParams, apply_colour, sample_colour
from .degradation import DegradationParams, apply_degradation, sample_degradation
from .geometric import GeometricParams, apply_geometric, sample_geometric
from ._random import gate
from .custom import CUSTOM
from .spec import PIPELINE_VERSION, LabelSpec, label_spec

__all__ = ["PerturbationParams", "Perturbations"]


@dataclass(frozen=True)
class PerturbationParams:
    """Everything needed to replay one batch of perturbations exactly."""

    geometric: GeometricParams
    colour: ColourParams
    degradation: DegradationParams
    custom: dict[str, dict[str, Tensor]] = field(default_factory=dict)


class Perturbations:
    """Random perturbations with per-sample parameters and their regression labels.

    Each op of the label spec is switched on independently per sample with its own probability.
    Order of application (METHOD.md Sec. 3): one composed affine warp for all geometric ops, one
    composed colour matrix, then blur, mixup (with another sample's perturbed image) and noise, then
    registered custom ops (:func:`~mfd_loss.perturbations.register_perturbation`).

    Args:
        spec: preset name (``"all"``, ``"geometric"``, ...), op names, or a :class:`LabelSpec`.
        p: probability each op is on; a float for all ops or a mapping ``{op: p}`` (ops of the
            spec missing from the mapping are off). The paper ramps p from 0 to 0.15.

    Raises:
        ValueError: unknown preset/op, a probability outside [0, 1], a mapping naming an op that
            is not in the spec, or a spec of another pipeline version (:data:`PIPELINE_VERSION`).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> pert = Perturbations("geometric", p=1.0)
        >>> x = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
        >>> y, labels = pert(x, generator=g)
        >>> tuple(y.shape), tuple(labels.shape)
        ((4, 3, 32, 32), (4, 7))
    """

    def __init__(self, spec: str | Iterable[str] | LabelSpec = "all", p: float | Mapping[str, float] = 0.15):
        self.spec = label_spec(spec)
        if self.spec.pipeline != PIPELINE_VERSION:
            raise ValueError(
                f"this label spec was produced with perturbation pipeline {self.spec.pipeline}, but this mfd-loss "
                f"implements pipeline {PIPELINE_VERSION} (the conventions changed: see "
                "docs/how-it-works.md); labels from one do not describe images of the other. Train a new map, or "
                "evaluate with the mfd-loss release that trained it"
            )
        self.p = self._probabilities(p)

    def _probabilities(self, p: float | Mapping[str, float]) -> dict[str, float]:
        if isinstance(p, Mapping):
            extra = set(p) - set(self.spec.ops)
            if extra:
                raise ValueError(f"probabilities given for ops {sorted(extra)} that are not in the spec {list(self.spec.ops)}")
            probs = {op: float(p.get(op, 0.0)) for op in self.spec.ops}
        else:
            probs = {op: float(p) for op in self.spec.ops}
        for op, value in probs.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"probability for {op!r} must lie in [0, 1], got {value}")
        return probs

    def sample(
        self,
        shape: tuple[int, int, int, int],
        generator: torch.Generator | None = None,
        p: float | Mapping[str, float] | None = None,
    ) -> PerturbationParams:
        """Draw parameters for a batch of the given (N, C, H, W) shape.

        Args:
            shape: batch shape.
            generator: source of randomness; the draws happen on its device, so a CPU generator
                gives the same parameters whatever device the images live on.
            p: overrides the probabilities given at construction (e.g. during a ramp).

        Raises:
            ValueError: RGB-only ops (hue, saturation) in the spec while C != 3; mixup with N < 2.
        """
        if len(shape) != 4:
            raise ValueError(f"expected an (N, C, H, W) shape, got {tuple(shape)}")
        if self.spec.needs_rgb and shape[1] != 3:
            raise ValueError(
                f"the label spec {list(self.spec.ops)} has RGB-only ops (hue, saturation) but images have "
                f"{shape[1]} channel(s); choose a spec without them, e.g. 'geometric+degradation'"
            )
        probs = self.p if p is None else self._probabilities(p)
        n = shape[0]
        geometric = sample_geometric(n, p=probs, generator=generator)
        colour = sample_colour(n, p=probs, generator=generator)
        degradation = sample_degradation(tuple(shape), p=probs, generator=generator)
        custom = {op: CUSTOM[op].sample(tuple(shape), gate(n, probs[op], generator), generator)
                  for op in self.spec.ops if op in CUSTOM}
        return PerturbationParams(geometric, colour, degradation, custom)

    def apply(self, x: Tensor, params: PerturbationParams) -> Tensor:
        """Apply sampled parameters to images (N, C, H, W) in [-1, 1]; replays exactly."""
        x = apply_geometric(x, params.geometric)
        x = apply_colour(x, params.colour)
        x = apply_degradation(x, params.degradation)
        for op, op_params in params.custom.items():
            x = CUSTOM[op].apply(x, {k: v.to(x.device) for k, v in op_params.items()})
        return x

    def labels(self, params: PerturbationParams) -> Tensor:
        """(N, K) float32 label vectors in the spec's order; all zero for an unperturbed sample."""
        parts = {**params.geometric.labels(), **params.colour.labels(), **params.degradation.labels(),
                 **{op: CUSTOM[op].labels(op_params).float() for op, op_params in params.custom.items()}}
        return torch.cat([parts[op] for op in self.spec.ops], dim=1)

    def __call__(
        self, x: Tensor, generator: torch.Generator | None = None, p: float | Mapping[str, float] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Sample, apply and label in one call.

        Returns:
            (perturbed images (N, C, H, W) on x's device, labels (N, K) float32 on x's device).
        """
        params = self.sample(tuple(x.shape), generator=generator, p=p)
        return self.apply(x, params), self.labels(params).to(x.device)

    def __repr__(self) -> str:
        return f"Perturbations(spec={list(self.spec.ops)}, p={self.p})"
