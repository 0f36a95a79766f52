"""The trainer on users' data: channel counts, resolutions, architectures, custom ops, DDP, interruption."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mfd_loss import MFD, FeatureMapConfig, TrainConfig, load_feature_map, load_sample_images, train_feature_map
from mfd_loss.cli import main as cli_main
from mfd_loss.perturbations import OpSpec, register_perturbation, unregister_perturbation

ROOT = Path(__file__).resolve().parents[1]
TINY = FeatureMapConfig(arch="vgg11", width=0.125)


def _config(steps=3, **kw):
    base = dict(steps=steps, batch_size=8, ramp_steps=2, eval_every=0, eval_size=8, checkpoint_every=2,
                eval_fraction=0.1)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def real():
    return load_sample_images()[0][:32]  # (32, 3, 32, 32) uint8 real CIFAR-10 test images


def test_grayscale_28px_gets_the_grayscale_preset_and_4_stages(tmp_path, real):
    gray = torch.nn.functional.interpolate(real[:, :1].float(), size=(28, 28), mode="area").round().to(torch.uint8)
    fmap, summary = train_feature_map(gray, tmp_path, config=_config(), architecture=TINY, progress=False)
    assert summary["finished"]
    assert fmap.config.num_stages == 4 and fmap.config.in_channels == 1 and fmap.config.num_labels == 12
    loaded, config = load_feature_map(tmp_path)
    assert "hue" not in config["label_spec"]["ops"] and "brightness" in config["label_spec"]["ops"]
    loss = MFD(pretrained=str(tmp_path))
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    assert loss(x, x.flip(-1)).shape == (2,)


@pytest.mark.parametrize("size", [(32, 48), (256, 256)])
def test_non_square_and_large_resolutions(tmp_path, real, size):
    images = torch.nn.functional.interpolate(real[:12].float(), size=size, mode="bilinear").round().to(torch.uint8)
    fmap, _ = train_feature_map(images, tmp_path, config=_config(steps=1), architecture=TINY, progress=False)
    assert tuple(fmap.config.resolution) == size and fmap.config.num_stages == 5
    x = images[:2].float() / 127.5 - 1
    assert MFD(pretrained=str(tmp_path))(x, x.flip(-1)).shape == (2,)


def test_rgb_only_spec_on_grayscale_is_a_clear_error(tmp_path, real):
    with pytest.raises(ValueError, match="RGB-only ops"):
        train_feature_map(real[:, :1], tmp_path, config=_config(spec="all"), architecture=TINY, progress=False)


def test_latents_float_with_declared_range(tmp_path):
    g = torch.Generator().manual_seed(0)
    latents = (torch.randn(24, 4, 16, 16, generator=g) * 1.2).clamp(-4, 4)
    arch = FeatureMapConfig(arch="vgg11", width=0.125)
    fmap, _ = train_feature_map(latents, tmp_path, config=_config(), architecture=arch, input_range=(-4, 4),
                                progress=False)
    _, config = load_feature_map(tmp_path)
    assert config["label_spec"]["ops"] == ["scale", "rotation", "anisotropic_scale", "translation", "blur", "mixup", "noise"]
    assert fmap.config.in_channels == 4 and fmap.config.num_stages == 4
    with pytest.raises(ValueError, match="declared input range"):
        train_feature_map(latents * 3, tmp_path / "bad", config=_config(), architecture=arch, input_range=(-4, 4),
                          progress=False)


def test_float_dataset_of_image_label_pairs_with_declared_range(tmp_path, real):
    """Datasets returning (image, label), as torchvision's and most users' do, with float images in [0, 1]."""

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            return real[i].float() / 255, i % 10

    config = _config(steps=1, eval_fraction=0.0)
    fmap, summary = train_feature_map(Pairs(), tmp_path, config=config, architecture=TINY, input_range=(0, 1),
                                      progress=False)
    assert summary["finished"] and tuple(fmap.config.data_range) == (0.0, 1.0)
    _, config = load_feature_map(tmp_path)
    assert config["architecture"]["data_range"] == [0.0, 1.0]


def test_config_json_names_the_copy_of_a_named_data_set(tmp_path, real):
    """cifar10 from torchvision (lossless) and from the project archive (JPEG-decoded) are other pixels: the
    exported config.json says which was read, next to the caller's own description."""
    from mfd_loss.training.image_sources import ImageTensorDataset

    data = ImageTensorDataset(real[:16], description="cifar10 train, torchvision's CIFAR10 (lossless pixels)")
    train_feature_map(data, tmp_path, config=_config(steps=1, eval_fraction=0.0), architecture=TINY,
                      dataset={"name": "cifar10", "split": "train"}, progress=False)
    dataset = load_feature_map(tmp_path)[1]["dataset"]
    assert dataset["source"] == "cifar10 train, torchvision's CIFAR10 (lossless pixels)"
    assert dataset["name"] == "cifar10" and dataset["num_images"] == 16


def test_resnet_family_trains_and_is_recorded(tmp_path, real):
    arch = FeatureMapConfig(arch="resnet10", width=0.125)
    fmap, _ = train_feature_map(real, tmp_path, config=_config(), architecture=arch, progress=False)
    loaded, config = load_feature_map(tmp_path)
    assert config["architecture"]["arch"] == "resnet10"
    assert type(loaded).__name__ == "ResNetFeatureMap"
    x = real[:2].float() / 127.5 - 1
    assert torch.allclose(loaded(x)[-1], fmap.eval()(x)[-1], atol=1e-5)


class _Stripes:
    spec = OpSpec("test_stripes", "custom", ("stripes_amplitude",), ((0.0, 0.2),), "a ~ U(0, 0.2) row sine")

    def sample(self, shape, on, generator):
        a = 0.2 * torch.rand(shape[0], generator=generator)
        return {"amplitude": torch.where(on, a, torch.zeros_like(a))}

    def apply(self, x, params):
        rows = torch.sin(torch.arange(x.shape[-2], dtype=x.dtype, device=x.device))[:, None]
        return x + params["amplitude"].to(x)[:, None, None, None] * rows

    def labels(self, params):
        return params["amplitude"][:, None]


def test_custom_perturbation_is_saved_and_checked_at_load(tmp_path, real):
    register_perturbation(_Stripes())
    try:
        train_feature_map(real, tmp_path, config=_config(spec=["translation", "test_stripes"]), architecture=TINY,
                          progress=False)
        _, config = load_feature_map(tmp_path)
        assert config["label_spec"]["ops"] == ["translation", "test_stripes"]
    finally:
        unregister_perturbation("test_stripes")
    with pytest.raises(ValueError, match="must be registered"):
        load_feature_map(tmp_path)
    register_perturbation(_Stripes())
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_perturbation(_Stripes())
        assert load_feature_map(tmp_path)[0].config.num_labels == 3  # loads once the op is registered again
    finally:
        unregister_perturbation("test_stripes")


def test_interrupted_run_resumes_without_losing_or_repeating_steps(tmp_path, real):
    straight, _ = train_feature_map(real, tmp_path / "a", config=_config(steps=4), architecture=TINY, progress=False)
    _, first = train_feature_map(real, tmp_path / "b", config=_config(steps=4), architecture=TINY, max_minutes=0,
                                 progress=False)
    assert first["step"] == 1 and not first["finished"]  # stopped with a checkpoint after one step
    resumed, second = train_feature_map(real, tmp_path / "b", config=_config(steps=4), architecture=TINY, progress=False)
    assert second["step"] == 4 and second["finished"]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    steps_logged = [int(line.split(",")[0]) for line in (tmp_path / "b" / "log.csv").read_text().splitlines()[1:]]
    assert steps_logged == [1, 2, 4]  # a row at the stop and at each checkpoint: the short first segment keeps its row
    assert first["stopped_by"] == "max_minutes" and second["stopped_by"] is None


def test_cli_trains_a_folder_and_mfd_loads_it(tmp_path, real):
    from PIL import Image

    folder = tmp_path / "my images"
    folder.mkdir()
    for i, im in enumerate(real[:20]):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    out = tmp_path / "run"
    code = cli_main(["train", "--data", str(folder), "--out", str(out), "--arch", "vgg11", "--width", "0.125",
                     "--steps", "2", "--batch-size", "8", "--ramp-steps", "1", "--eval-fraction", "0.2",
                     "--eval-every", "0"])
    assert code == 0
    loss = MFD(pretrained=str(out))
    x = real[:3].float() / 127.5 - 1
    assert torch.all(loss(x, x.roll(1, -1)) > 0)
    assert (out / "eval.csv").read_text().count("\n") == 2  # header + the final evaluation


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["standalone", "c10d"])
def test_ddp_two_cpu_processes_match_one_process(tmp_path, real, launcher):
    """``torchrun --standalone`` and the multi-node form on one node (``--nnodes 1 --rdzv-backend c10d``, what
    docs/training.md gives for N nodes) both reproduce one process with the whole batch."""
    np.save(tmp_path / "x.npy", real.permute(0, 2, 3, 1).numpy())
    args = ["train", "--data", str(tmp_path / "x.npy"), "--arch", "vgg11", "--width", "0.125", "--steps", "3",
            "--batch-size", "16", "--ramp-steps", "2", "--eval-fraction", "0", "--eval-every", "0", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    rendezvous = (["--standalone"] if launcher == "standalone" else
                  ["--nnodes", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{_free_port()}",
                   "--rdzv-id", "mfd-test"])
    subprocess.run([sys.executable, "-m", "torch.distributed.run", *rendezvous, "--nproc-per-node", "2",
                    "-m", "mfd_loss.cli", *args, "--out", str(tmp_path / "ddp")], check=True, env=env,
                   capture_output=True, timeout=300)
    assert cli_main([*args, "--out", str(tmp_path / "single")]) == 0
    ddp, single = load_file(tmp_path / "ddp" / "model.safetensors"), load_file(tmp_path / "single" / "model.safetensors")
    assert ddp.keys() == single.keys()
    for key in single:
        torch.testing.assert_close(ddp[key].float(), single[key].float(), atol=2e-5, rtol=1e-4, msg=key)
    # BatchNorm statistics were updated once per step
    assert single["stages.0.1.num_batches_tracked"].item() == 3
    assert not torch.allclose(single["stages.0.1.running_mean"], torch.zeros_like(single["stages.0.1.running_mean"]))
