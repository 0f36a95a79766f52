"""float64 in, float64 out: gradcheck users need the loss in double precision end to end."""

from __future__ import annotations

import torch

from mfd_loss import MFD


def test_float64_inputs_give_a_float64_value_and_pass_gradcheck(images):
    loss_fn = MFD("cifar10")
    x = images[:2].double()
    y = images[2:4].double()
    value = loss_fn(x, y)
    assert value.dtype == torch.float64 and value.shape == (2,)
    torch.testing.assert_close(value.float(), loss_fn(x.float(), y.float()), rtol=1e-4, atol=1e-3)
    assert all(p.dtype == torch.float32 for p in loss_fn.feature_map.parameters())  # the map is not converted
    probe = x[:1].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: loss_fn(p, y[:1]), (probe,), eps=1e-6, atol=1e-4, fast_mode=True)
