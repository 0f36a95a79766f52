"""Registering a perturbation of your own, with its label spec.

A custom perturbation is an object with an :class:`~mfd_loss.perturbations.OpSpec` (``spec``, group
``"custom"``) and three methods: ``sample(shape, on, generator) -> dict of per-sample tensors`` (holding the
neutral value where ``on`` is False), ``apply(x, params) -> x`` and ``labels(params) -> (N, k)`` (zero where
off). Registered ops are applied after the built-in ones, in registration order, and their labels follow
the built-in labels. A map trained with a custom op records it in its label spec; loading that map needs
the op registered again (import the module that registers it first).

Examples:
    >>> import torch
    >>> from mfd_loss.perturbations import OpSpec, Perturbations, register_perturbation, unregister_perturbation
    >>> class Stripes:
    ...     spec = OpSpec("stripes", "custom", ("stripes_amplitude",), ((0.0, 0.2),), "a ~ U(0, 0.2) horizontal sine")
    ...     def sample(self, shape, on, generator):
    ...         a = 0.2 * torch.rand(shape[0], generator=generator, device=on.device)
    ...         return {"amplitude": torch.where(on, a, torch.zeros_like(a))}
    ...     def apply(self, x, params):
    ...         rows = torch.sin(torch.arange(x.shape[-2], device=x.device, dtype=x.dtype))[:, None]
    ...         return x + params["amplitude"].to(x)[:, None, None, None] * rows
    ...     def labels(self, params):
    ...         return params["amplitude"][:, None]
    >>> _ = register_perturbation(Stripes())
    >>> Perturbations(["translation", "stripes"], p=1.0).spec.labels
    ('translate_x', 'translate_y', 'stripes_amplitude')
    >>> unregister_perturbation("stripes")
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from .spec import OPS, OpSpec

__all__ = ["CustomPerturbation", "CUSTOM", "register_perturbation", "unregister_perturbation"]


class CustomPerturbation(Protocol):
    """What a registered perturbation provides (see the module docstring)."""

    spec: OpSpec

    def sample(self, shape: tuple[int, int, int, int], on: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        ...

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        ...

    def labels(self, params: dict[str, Tensor]) -> Tensor:
        ...


#: Registered custom perturbations by name, in registration order.
CUSTOM: dict[str, Any] = {}


def register_perturbation(op: CustomPerturbation) -> CustomPerturbation:
    """Make a custom perturbation available to label specs, the pipeline and the trainer.

    Raises:
        ValueError: the name is taken, the spec's group is not ``"custom"``, or labels and ranges differ in length.
        TypeError: a method is missing.
    """
    spec = getattr(op, "spec", None)
    if not isinstance(spec, OpSpec):
        raise TypeError("a custom perturbation needs a `spec` attribute of type OpSpec")
    for method in ("sample", "apply", "labels"):
        if not callable(getattr(op, method, None)):
            raise TypeError(f"custom perturbation {spec.name!r} lacks a {method}() method")
    if spec.name in OPS:
        raise ValueError(f"a perturbation named {spec.name!r} is already registered")
    if spec.group != "custom":
        raise ValueError(f"custom perturbations use group 'custom', got {spec.group!r}")
    if len(spec.labels) != len(spec.ranges) or not spec.labels:
        raise ValueError(f"{spec.name!r}: give one (low, high) range per label")
    OPS[spec.name] = spec
    CUSTOM[spec.name] = op
    return op


def unregister_perturbation(name: str) -> None:
    """Remove a custom perturbation (built-in ones cannot be removed).

    Raises:
        KeyError: no custom perturbation of that name.
    """
    if name not in CUSTOM:
        raise KeyError(f"no custom perturbation named {name!r}")
    del CUSTOM[name], OPS[name]
