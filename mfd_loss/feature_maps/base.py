"""What every feature map shares: input checks, taps, the regression head, ``feature_info``."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor, nn

from .._validation import check_images
from ..hub.mixin import FeatureMapHubMixin
from ..hub.serialization import register_architectures
from .config import FeatureMapConfig

__all__ = ["TapFeatureMap", "scaled"]


def scaled(channels: int, width: float) -> int:
    """Channels of a conv after the width multiplier (at least 8)."""
    return max(8, round(channels * width))


class TapFeatureMap(FeatureMapHubMixin, nn.Module):
    """Base class: ``stages`` (an ``nn.ModuleList``) produce the spatial taps, ``head`` the K outputs.

    ``forward`` returns the output of every stage followed by the head output as (N, K, 1, 1): the
    taps the distance compares. Subclasses build ``self.stages`` and ``self.head`` and call
    :meth:`reset_parameters`. A subclass lists the ``config.arch`` names it builds in ``architectures``;
    that is how a saved map (:func:`mfd_loss.load_feature_map`) finds the class to rebuild it with.
    """

    architectures: ClassVar[tuple[str, ...]] = ()
    config: FeatureMapConfig
    stages: nn.ModuleList
    head: nn.Linear

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "architectures" in cls.__dict__:
            register_architectures(cls.architectures, cls)

    @classmethod
    def config_from_dict(cls, data: Mapping[str, Any]) -> FeatureMapConfig:
        """The architecture stored in ``config.json`` (see :meth:`FeatureMapConfig.from_dict`)."""
        return FeatureMapConfig.from_dict(data)

    @property
    def min_size(self) -> int:
        """Smallest H and W the network can serve."""
        return self.config.min_size

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """One entry per tap: ``name``, ``channels``, ``reduction`` (stride w.r.t. the input; None for the head)."""
        probe = torch.zeros(1, self.config.in_channels, *self.config.resolution)
        was_training = self.training
        self.eval()
        with torch.no_grad():
            taps = self.forward(probe.to(next(self.parameters())))
        self.train(was_training)
        info = [{"name": f"stage{i + 1}", "channels": t.shape[1],
                 "reduction": self.config.resolution[0] // t.shape[2]} for i, t in enumerate(taps[:-1])]
        info.append({"name": "head", "channels": self.config.num_labels, "reduction": None})
        return info

    def forward(self, x: Tensor) -> list[Tensor]:
        """Taps for a batch.

        Args:
            x: (N, C, H, W) float in ``config.input_range``; H, W >= ``min_size``.

        Returns:
            list of stage outputs (N, C_i, H_i, W_i) followed by the head output (N, K, 1, 1).

        Raises:
            ValueError: x is not a floating (N, C, H, W) tensor with the right C and a large enough size.
        """
        check_images(x, channels=self.config.in_channels, min_size=self.min_size)
        taps = []
        for stage in self.stages:
            x = stage(x)
            taps.append(x)
        head = self.head(torch.flatten(torch.mean(x, dim=(2, 3)), 1))
        taps.append(head[:, :, None, None])
        return taps

    def predict_labels(self, x: Tensor) -> Tensor:
        """(N, K) regression outputs (the perturbation-parameter estimates)."""
        return self(x)[-1].flatten(1)

    def extra_repr(self) -> str:
        c = self.config
        return f"arch={c.arch}, width={c.width}, in_channels={c.in_channels}, labels={c.num_labels}, stages={c.num_stages}"
