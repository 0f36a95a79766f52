"""CUDA checks of the loss's call path (issue 11, item 8). Skipped without a GPU; the GPU script runs them:

    python -m pytest tests/test_cuda.py -m cuda -q
"""

from __future__ import annotations

import pytest
import torch

from mfd_loss import MFD, Perturbations, manifold_feature_distance
from mfd_loss.consistency import tangent_loss

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available())")]


def test_cpu_loss_follows_cuda_inputs_once(tiny_map, images):
    """A loss built on the CPU and held by a non-Module host (openai's KarrasDenoiser) moves to the GPU on its
    first call with CUDA inputs, gives the CPU's values, and does not move again."""
    loss = MFD(pretrained=None, feature_map=tiny_map)
    x, y = images[:8], images[8:16]
    expected = loss(x, y)
    moves = []
    original = loss.feature_map.to
    loss.feature_map.to = lambda *a, **k: (moves.append(a), original(*a, **k))[1]
    xc, yc = x.cuda().requires_grad_(True), y.cuda()
    for _ in range(3):
        out = loss(xc, yc)
    assert out.device.type == "cuda" and len(moves) == 1
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)
    out.sum().backward()
    assert xc.grad is not None and torch.isfinite(xc.grad).all()
    assert next(tiny_map.parameters()).device.type == "cpu"  # the caller's map stays where it was


def test_functional_names_both_devices(tiny_map, images):
    with pytest.raises(ValueError, match=r"feature map is on cpu but the inputs are on cuda:0"):
        manifold_feature_distance(tiny_map, images[:2].cuda(), images[2:4].cuda())
    loss = MFD(pretrained=None, feature_map=tiny_map)
    with pytest.raises(ValueError, match=r"prediction is on cuda:0 but target is on cpu"):
        loss(images[:2].cuda(), images[2:4])


def test_validate_args_off_has_no_host_sync(tiny_map, images):
    """With validate_args=False a call makes no device-to-host synchronisation (torch.cuda sync debug mode)."""
    loss = MFD(pretrained=None, feature_map=tiny_map).cuda()
    fast = MFD(pretrained=None, feature_map=tiny_map, validate_args=False).cuda()
    x, y = images[:8].cuda(), images[8:16].cuda()
    fast(x, y), loss(x, y)  # warm-up (lazy initialisation may synchronise)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = fast(x, y)
        with pytest.raises(RuntimeError, match="synchroniz"):
            loss(x, y)  # the value checks read the data back: one sync per call
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(out, loss(x, y))


# ---- checks for the one-GPU script (benchmarks/gpu/run.py runs `pytest -m cuda`): precision, memory format,
# ---- graph capture and the AYT identity on the device (issue 14)
DEV = "cuda"


@pytest.fixture
def no_tf32():
    """fp32 convolutions and matmuls in full precision, so two code paths can be compared tightly."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_autocast_value_and_gradient_are_finite_where_prediction_equals_target(tiny_map, images, dtype):
    """At prediction == target the group-L2 distance sits at the kink of a square root: value ~0, and the
    gradient must stay finite (no 0/0) in every autocast precision."""
    loss = MFD(pretrained=None, feature_map=tiny_map).to(DEV)
    x = images[:8].to(DEV)
    shifted = x.roll(1, dims=-1)
    prediction = x.clone().requires_grad_(True)
    with torch.autocast(DEV, dtype=dtype, enabled=dtype is not torch.float32):
        at_target = loss(prediction, x)
        apart = loss(shifted, x)
    at_target.sum().backward()
    assert at_target.dtype == torch.float32 and torch.isfinite(at_target).all()
    assert torch.isfinite(prediction.grad).all()
    assert at_target.max() < 1e-3 * apart.min()  # a one-pixel shift is far from equality in every precision


def test_channels_last_inputs_and_map_give_the_contiguous_values_and_gradients(tiny_map, images, no_tf32):
    loss = MFD(pretrained=None, feature_map=tiny_map).to(DEV)
    x, y = images[:8].to(DEV), images[8:16].to(DEV)
    a = x.clone().requires_grad_(True)
    expected = loss(a, y)
    expected.sum().backward()
    nhwc = MFD(pretrained=None, feature_map=tiny_map).to(DEV, memory_format=torch.channels_last)
    for module in (loss, nhwc):
        b = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        value = module(b, y.contiguous(memory_format=torch.channels_last))
        value.sum().backward()
        torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-4 * a.grad.abs().max().item())


def test_compiled_fullgraph_without_value_checks_matches_eager(tiny_map, images, no_tf32):
    """validate_args=False leaves no data-dependent branch: the whole loss compiles as one graph (inductor,
    Triton kernels) and gives eager's values and gradients."""
    torch._dynamo.reset()
    loss = MFD(pretrained=None, feature_map=tiny_map, validate_args=False).to(DEV)
    compiled = torch.compile(loss, fullgraph=True)
    x, y = images[:8].to(DEV), images[8:16].to(DEV)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    expected = loss(a, y)
    expected.sum().backward()
    value = compiled(b, y)
    value.sum().backward()
    torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-4 * a.grad.abs().max().item())
    torch._dynamo.reset()


def test_tangent_loss_gradient_is_the_weighted_unit_mfd_gradient_on_the_device(tiny_map, images):
    """AYT's identity (METHOD.md Sec. 5): d/dD_t of tangent_loss = w_b g_b / ||g_b|| / B, g_b = dMFD_b / dD_t."""
    mfd = MFD(pretrained=None, feature_map=tiny_map).to(DEV)
    x, y = images[:4].to(DEV), images[4:8].to(DEV)
    weight = torch.tensor([1.0, 3.0, 0.5, 7.0], device=DEV)
    prediction = x.clone().requires_grad_(True)
    tangent_loss(prediction, y, mfd, weight).backward()
    probe = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(mfd(probe, y).sum(), probe)
    unit = g / g.flatten(1).norm(dim=1)[:, None, None, None]
    torch.testing.assert_close(prediction.grad, weight[:, None, None, None] * unit / 4, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(prediction.grad.flatten(1).norm(dim=1), weight / 4)


def test_perturbations_of_device_images_match_the_cpu(images, no_tf32):
    """Parameters come from a CPU generator whatever the images' device (the trainer's resume and its torchrun
    processes rely on it): perturbing on the device gives the CPU's images and exactly the CPU's labels."""
    pert = Perturbations("all", p=0.5)
    x = images[:16]
    expected, expected_labels = pert(x, generator=torch.Generator().manual_seed(3))
    perturbed, labels = pert(x.to(DEV), generator=torch.Generator().manual_seed(3))
    assert perturbed.device.type == labels.device.type == torch.device(DEV).type
    torch.testing.assert_close(labels.cpu(), expected_labels, rtol=0, atol=0)
    torch.testing.assert_close(perturbed.cpu(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="nn.DataParallel over devices needs 2 or more GPUs")
def test_data_parallel_over_gpus_matches_one_device(tiny_map, images):
    """Each replica uses a map on its own GPU; the shared map stays on GPU 0 and the values match the CPU's."""
    from torch import nn

    class Host(nn.Module):
        def __init__(self):
            super().__init__()
            self.loss = MFD(pretrained=None, feature_map=tiny_map)

        def forward(self, x, y):
            return self.loss(x, y)

    x, y = images[:16], images[16:32]
    expected = Host()(x, y)
    host = Host().cuda()
    parallel = nn.DataParallel(host)
    for _ in range(3):
        out = parallel(x.cuda(), y.cuda())
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)
    assert all(p.device == torch.device("cuda:0") for p in host.loss.feature_map.parameters())
    assert set(host.loss._frozen.copies) == {torch.device(f"cuda:{i}") for i in range(1, torch.cuda.device_count())}


def test_continuous_objective_on_cuda_with_attention_and_dropout(tiny_map, images):
    """The continuous-time objective on CUDA through the example U-Net with attention (the JVP pass selects SDPA's
    math backend: the flash and memory-efficient kernels have no forward-mode AD): the prediction uses the
    JVP's dropout draw of the CUDA generator, eval-mode values match the CPU, bf16 autocast gives finite grads."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from unet import UNet

    from mfd_loss.consistency import ContinuousConsistencyLoss, EDMDenoiser

    torch.manual_seed(0)
    model = EDMDenoiser(UNet(3, 16, (1, 2), 1, (16,), dropout=0.2))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3 / max(1, p[0].numel()) ** 0.5)
    loss_fn = ContinuousConsistencyLoss(MFD(pretrained=None, feature_map=tiny_map), validate_args=False)
    x0, eps = images[:4], torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.1, 0.5, 2.0, 10.0])
    x = x0 + sigma[:, None, None, None] * eps
    expected = loss_fn(model.eval(), x, sigma, eps).tangent_norm
    model, loss_fn = model.cuda(), loss_fn.cuda()
    xc, sc, ec = x.cuda(), sigma.cuda(), eps.cuda()
    torch.testing.assert_close(loss_fn(model, xc, sc, ec).tangent_norm.cpu(), expected, rtol=1e-3, atol=1e-3)
    model.train()
    torch.cuda.manual_seed(7)
    with torch.no_grad():
        reference = model(xc, sc)
    torch.cuda.manual_seed(7)
    out = loss_fn(model, xc, sc, ec)
    torch.testing.assert_close(out.prediction.detach(), reference, rtol=0, atol=0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = loss_fn(model, xc, sc, ec)
    half.loss.backward()
    assert torch.isfinite(half.loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
