"""Tangent alignment: how much of a loss's update direction runs *along* the data manifold.

AYT (Kim, Cha & Ye 2025, Sec. 3) explains slow consistency training by the direction in which a pixel loss
pushes the model's output, its "tangent": much of it is parallel to the data manifold, so outputs wander
along the manifold instead of converging. This module makes that claim measurable on any model and data.

For a prediction x̂ of a target y, the update direction of a loss d is g = -∂d(x̂, y)/∂x̂. Given K vectors
spanning the manifold's tangent space at y (stacked as ``tangents``), the *parallel energy fraction* is

    f = ||P g||^2 / ||g||^2,    P = orthogonal projector onto span(tangents),

so f = 1 means the loss only moves the output along the manifold, f = 0 only towards or away from it. A
random direction in D pixels has E[f] = K / D.

Where the manifold is unknown (real images), :func:`nuisance_tangents` approximates its tangent space at an
image by the derivatives of transformations that keep an image on the manifold: sub-pixel shifts, rotation,
scale (the "tangent vectors" of Simard et al. 1992) and brightness, contrast, saturation, hue.

Typical use on a consistency model's outputs (prediction D_t and stop-gradient target D_r)::

    from mfd_loss import MFD
    from mfd_loss.diagnostics import nuisance_tangents, tangent_alignment

    fraction = tangent_alignment(MFD("cifar10", reduction="none"), d_t, d_r, nuisance_tangents(d_r))
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .feature_maps import build_feature_map
from .loss import MFD

__all__ = [
    "NUISANCE_DIRECTIONS", "nuisance_tangents", "parallel_energy_fraction", "loss_gradient", "tangent_alignment",
    "controlled_displacement", "random_init_like",
]

#: Transformations whose derivatives :func:`nuisance_tangents` returns by default (``saturation`` and ``hue``
#: need 3 channels and are left out for other channel counts).
NUISANCE_DIRECTIONS = ("shift_x", "shift_y", "rotation", "scale", "brightness", "contrast", "saturation", "hue")
_COLOUR_ONLY = ("saturation", "hue")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights


def _check_batch(images: Tensor, name: str = "images") -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a float tensor of shape (N, C, H, W), got {got}")


def _spatial_gradient(images: Tensor) -> tuple[Tensor, Tensor]:
    """Central differences dI/dx, dI/dy in pixel units (one-sided at the border)."""
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    dx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    dy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    return dx, dy


def nuisance_tangents(images: Tensor, directions: Sequence[str] | None = None) -> Tensor:
    """Tangent vectors of nuisance transformations at each image: derivatives at the identity.

    Geometric directions are d/dθ I(T_θ^{-1} p) at θ = 0, i.e. -∇I(p) · v(p) with the transformation's
    velocity field v (shift_x: (1, 0); shift_y: (0, 1); rotation: (-y, x) about the image centre; scale:
    (x, y) from the centre), ∇I by central differences (Simard, LeCun & Denker 1992, "tangent distance").
    Colour directions are exact derivatives: brightness 1 (an added constant), contrast I - mean(I),
    saturation I - luma(I), hue u × I (rotation about the grey axis u = (1, 1, 1)/√3).

    Args:
        images: (N, C, H, W) float images, any value range (the derivatives are linear in I).
        directions: names from :data:`NUISANCE_DIRECTIONS`; default all of them that apply to C channels
            (``saturation`` and ``hue`` only for C = 3).

    Returns:
        (N, K, C, H, W) tangent vectors, K = len(directions), same dtype as ``images``; each is scaled so
        that a unit coefficient is a one-pixel shift, one radian, a unit relative scale or a unit change
        of the colour parameter. Only their span matters to :func:`parallel_energy_fraction`.

    Raises:
        ValueError: images not (N, C, H, W) float; an unknown direction; saturation/hue with C != 3.
    """
    _check_batch(images)
    n, c, h, w = images.shape
    if directions is None:
        directions = tuple(d for d in NUISANCE_DIRECTIONS if c == 3 or d not in _COLOUR_ONLY)
    unknown = [d for d in directions if d not in NUISANCE_DIRECTIONS]
    if unknown or not directions:
        raise ValueError(f"unknown nuisance directions {unknown or '(none given)'}; choose from {NUISANCE_DIRECTIONS}")
    if c != 3 and any(d in _COLOUR_ONLY for d in directions):
        raise ValueError(f"saturation and hue need 3-channel images, got {c} channel(s); leave them out")
    dx, dy = _spatial_gradient(images)
    y = (torch.arange(h, dtype=images.dtype, device=images.device) - (h - 1) / 2).view(h, 1)
    x = (torch.arange(w, dtype=images.dtype, device=images.device) - (w - 1) / 2).view(1, w)
    luma = torch.tensor(_LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1) if c == 3 else None
    vectors = []
    for name in directions:
        if name == "shift_x":
            v = -dx
        elif name == "shift_y":
            v = -dy
        elif name == "rotation":
            v = -(dx * -y + dy * x)
        elif name == "scale":
            v = -(dx * x + dy * y)
        elif name == "brightness":
            v = torch.ones_like(images)
        elif name == "contrast":
            v = images - images.mean(dim=(1, 2, 3), keepdim=True)
        elif name == "saturation":
            v = images - (images * luma).sum(1, keepdim=True)
        else:  # hue: d/dθ of the Rodrigues rotation of each colour vector about the grey axis, at θ = 0
            r, g, b = images.unbind(1)
            v = torch.stack([b - g, r - b, g - r], dim=1) / math.sqrt(3)
        vectors.append(v)
    return torch.stack(vectors, dim=1)


def _orthonormal_basis(tangents: Tensor, rtol: float) -> tuple[Tensor, Tensor]:
    """Per sample, an orthonormal basis (N, D, K) of span(tangents) and a (N, K) mask of its kept columns."""
    a = tangents.flatten(2).transpose(1, 2).double()  # (N, D, K)
    u, s, _ = torch.linalg.svd(a, full_matrices=False)
    keep = s > rtol * s.amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return u, keep


def parallel_energy_fraction(vectors: Tensor, tangents: Tensor, *, rtol: float = 1e-6) -> Tensor:
    """Fraction of each vector's squared norm inside the span of its tangent vectors: ||P v||² / ||v||².

    Computed in float64 from an SVD of the tangents, so linearly dependent tangent vectors (rank < K) count
    once: the projector is onto their span, never onto extra directions.

    Args:
        vectors: (N, *S) float tensor, e.g. (N, C, H, W) update directions.
        tangents: (N, K, *S) float tensor, K ≥ 1 tangent vectors per sample (any scale, not necessarily
            orthogonal), e.g. from :func:`nuisance_tangents`.
        rtol: singular values below ``rtol`` times the largest are treated as zero (rank deficiency).

    Returns:
        (N,) float64 fractions in [0, 1]; NaN where a vector is exactly zero (no direction to measure).

    Raises:
        ValueError: shapes that do not match as described.
    """
    if not isinstance(vectors, Tensor) or not isinstance(tangents, Tensor) or vectors.dim() < 2 \
            or tangents.shape[:1] + tangents.shape[2:] != vectors.shape or tangents.dim() != vectors.dim() + 1:
        got = (tuple(getattr(vectors, "shape", ())), tuple(getattr(tangents, "shape", ())))
        raise ValueError(f"expected vectors (N, *S) and tangents (N, K, *S), got shapes {got[0]} and {got[1]}")
    basis, keep = _orthonormal_basis(tangents, rtol)
    v = vectors.flatten(1).double()
    coefficients = torch.einsum("ndk,nd->nk", basis, v) * keep
    total = v.pow(2).sum(1)
    fraction = coefficients.pow(2).sum(1) / total
    return torch.where(total > 0, fraction.clamp(0.0, 1.0), torch.full_like(total, math.nan))


def loss_gradient(loss_fn: Callable[[Tensor, Tensor], Tensor], prediction: Tensor, target: Tensor) -> Tensor:
    """∂ Σ_b loss_fn(prediction, target)_b / ∂ prediction, w.r.t. the prediction only.

    The target is detached, no graph is kept, and parameters of ``loss_fn`` receive no gradient. Because the
    per-sample losses are summed, row b of the result is the gradient of sample b's own loss.

    Args:
        loss_fn: (prediction, target) -> per-sample losses (N,) (e.g. ``MFD(..., reduction="none")``) or a
            scalar that is a sum/mean of per-sample terms.
        prediction: (N, C, H, W) float tensor, where the gradient is taken.
        target: (N, C, H, W) float tensor of the same shape (treated as a constant).

    Returns:
        (N, C, H, W) gradient, float32 (or the prediction's dtype if wider).

    Raises:
        ValueError: shape mismatch, or a loss that does not depend differentiably on the prediction.
    """
    _check_batch(prediction, "prediction")
    if target.shape != prediction.shape:
        raise ValueError(f"prediction and target must have the same shape, got {tuple(prediction.shape)} "
                         f"and {tuple(target.shape)}")
    with torch.enable_grad():
        probe = prediction.detach().float().requires_grad_(True)
        value = loss_fn(probe, target.detach().float())
        if not isinstance(value, Tensor) or not value.requires_grad:
            raise ValueError("loss_fn's value does not depend differentiably on the prediction")
        (grad,) = torch.autograd.grad(value.sum(), probe)
    return grad


def tangent_alignment(loss_fn: Callable[[Tensor, Tensor], Tensor], prediction: Tensor, target: Tensor,
                      tangents: Tensor) -> Tensor:
    """Parallel energy fraction of a loss's update direction -∂loss/∂prediction, per sample.

    The measurement behind AYT's central claim (Kim, Cha & Ye 2025, Sec. 3): pixel losses push a consistency
    model's output largely *along* the data manifold; MFD's gradient should have a smaller parallel share.
    Compare a loss against pixel L2 on the same (prediction, target, tangents), and against a randomly
    initialised feature map of the same architecture: an untrained network already changes the fraction.

    Args:
        loss_fn: (prediction, target) -> (N,) per-sample losses, differentiable in the prediction.
        prediction: (N, C, H, W) model outputs (e.g. D_t), any value range ``loss_fn`` accepts.
        target: (N, C, H, W) targets (e.g. the stop-gradient D_r).
        tangents: (N, K, C, H, W) tangent vectors of the manifold at the targets, e.g.
            ``nuisance_tangents(target)`` for real images or exact derivatives for a synthetic manifold.

    Returns:
        (N,) float64 fractions in [0, 1]; NaN where the gradient is exactly zero (prediction == target).

    Raises:
        ValueError: shapes that do not match, or a loss that is not differentiable in the prediction.
    """
    return parallel_energy_fraction(loss_gradient(loss_fn, prediction, target), tangents)


def controlled_displacement(target: Tensor, tangents: Tensor, parallel_rms: float, orthogonal_rms: float,
                            generator: torch.Generator | None = None) -> Tensor:
    """A prediction displaced from ``target`` by known amounts along and across the tangent span.

    prediction = target + a · u_par + b · u_orth, with u_par a random unit vector inside span(tangents), u_orth a
    random unit vector (Gaussian, projected out of the span) orthogonal to it, and a, b chosen so the two
    displacements have the requested root-mean-square per element. With equal RMS, pixel L2's update direction
    has a parallel energy fraction of exactly 0.5: the reference a loss is compared with.

    Args:
        target: (N, C, H, W) float images.
        tangents: (N, K, C, H, W) tangent vectors at the targets.
        parallel_rms: RMS per element of the displacement inside the span, ≥ 0, in the images' units.
        orthogonal_rms: RMS per element of the displacement orthogonal to it, ≥ 0.
        generator: CPU generator for the random directions (reproducible).

    Returns:
        (N, C, H, W) prediction, same dtype and device as ``target``.

    Raises:
        ValueError: bad shapes or negative RMS values.
    """
    _check_batch(target, "target")
    if tangents.dim() != 5 or tangents.shape[:1] + tangents.shape[2:] != target.shape:
        raise ValueError(f"tangents must be (N, K, C, H, W) matching target {tuple(target.shape)}, "
                         f"got {tuple(tangents.shape)}")
    if parallel_rms < 0 or orthogonal_rms < 0:
        raise ValueError(f"RMS values must be non-negative, got {parallel_rms} and {orthogonal_rms}")
    n, d = target.shape[0], target[0].numel()
    basis, keep = _orthonormal_basis(tangents, 1e-6)
    coefficients = torch.randn(n, basis.shape[2], generator=generator, dtype=torch.float64).to(basis.device) * keep
    along = torch.einsum("ndk,nk->nd", basis, coefficients)
    noise = torch.randn(n, d, generator=generator, dtype=torch.float64).to(basis.device)
    across = noise - torch.einsum("ndk,nk->nd", basis, torch.einsum("ndk,nd->nk", basis, noise) * keep)
    scale = math.sqrt(d)
    step = (parallel_rms * scale * along / along.norm(dim=1, keepdim=True)
            + orthogonal_rms * scale * across / across.norm(dim=1, keepdim=True))
    return target + step.view_as(target).to(target.dtype)


def random_init_like(loss_or_map: MFD | nn.Module, seed: int = 0) -> MFD:
    """The random-init control: an MFD on a freshly initialised map of the same architecture.

    An untrained network already lowers a loss's parallel energy fraction (METHOD.md Sec. 8), so an alignment
    (or training) result of a trained map means something only beside this control. The map is built from
    the same ``FeatureMapConfig`` (family, width, channels, labels, resolution, data range), initialised under
    ``torch.manual_seed(seed)`` without touching the global random state, and put on the device and dtype of
    the original; given an MFD, the control keeps its options (distance, normalize, reduction, resize,
    validate_args), so the two differ only in the map's weights.

    Args:
        loss_or_map: an :class:`~mfd_loss.MFD`, or a feature map (an ``nn.Module`` with a ``config``, e.g. a
            :class:`~mfd_loss.VGGFeatureMap` or a map from :func:`~mfd_loss.load_feature_map`).
        seed: seeds the initialisation (the same seed gives the same weights).

    Returns:
        an MFD (frozen map in eval mode, as any MFD).

    Raises:
        TypeError: ``loss_or_map`` is neither an MFD nor a feature map with a ``config``.
    """
    is_loss = isinstance(loss_or_map, MFD)
    fmap = loss_or_map.feature_map if is_loss else loss_or_map
    config = getattr(fmap, "config", None)
    if not isinstance(fmap, nn.Module) or config is None:
        raise TypeError("random_init_like takes an MFD or a feature map with a config, got "
                        f"{type(loss_or_map).__name__}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = build_feature_map(config)
    reference = next(fmap.parameters(), None)
    if reference is not None:
        fresh = fresh.to(reference.device, reference.dtype)
    options = {}
    if is_loss:
        options = {"distance": loss_or_map.distance, "normalize": loss_or_map.normalize,
                   "reduction": loss_or_map.reduction, "resize": loss_or_map.resize,
                   "validate_args": loss_or_map.validate_args}
    return MFD(pretrained=None, feature_map=fresh, **options)
