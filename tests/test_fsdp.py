"""A host sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``) that holds an MFD, on CPU with gloo.

Two processes build the same host (a tiny consistency-model-like network that owns ``MFD("cifar10")``), shard it
with ``fully_shard`` and train one step. What a user relies on when outgrowing one machine:

* the host's parameters are sharded (DTensors) and train; MFD's feature map is not: it is no submodule of the
  host, so ``fully_shard`` never sees it, it stays a plain, full, frozen copy on every rank (never sharded,
  never broadcast), and it is in no state dict the host or ``torch.distributed.checkpoint`` would save;
* the loss is identical across ranks for the same inputs (each rank holds the same full map).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD = 2


class Host(nn.Module):
    """A consistency-model-like network that owns its loss (as ECT, diffusers scripts and Lightning modules do)."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        torch.manual_seed(0)  # the same initial weights on every rank
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 3, 3, padding=1))
        self.loss = loss

    def forward(self, x):
        return x + 0.1 * self.net(x)


def _worker(rank: int, rendezvous: str, out: str) -> None:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from mfd_loss import MFD, load_sample_images
    from mfd_loss.diagnostics import random_init_like

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    try:
        host = Host(MFD(pretrained="cifar10"))
        fmap = host.loss.feature_map
        reference = {k: v.clone() for k, v in fmap.state_dict().items()}
        # A second MFD whose map differs per rank: any broadcast from rank 0 would overwrite rank 1's copy.
        host.probe = random_init_like(host.loss, seed=10 + rank)
        probe_reference = {k: v.clone() for k, v in host.probe.feature_map.state_dict().items()}
        fully_shard(host.net[0])
        fully_shard(host)
        images = load_sample_images()[0].float() / 127.5 - 1
        x, y = images[:8], images[8:16]  # the same inputs on both ranks
        optimizer = torch.optim.AdamW(host.parameters(), lr=1e-2)
        before = [p.full_tensor().clone() for p in host.parameters()]

        loss = host.loss(host(x), y)  # (N,) per-sample MFD
        loss.mean().backward()
        optimizer.step()

        with torch.no_grad():
            after_step = host.loss(host(x), y)
        values = [torch.zeros_like(after_step) for _ in range(WORLD)]
        dist.all_gather(values, after_step)
        state = host.state_dict()
        saved = get_model_state_dict(host)
        result = {
            "loss_shape": list(loss.shape),
            "loss_equal_across_ranks": all(torch.equal(values[0], v) for v in values),
            "loss_after": after_step.tolist(),
            "host_params_are_dtensors": all(isinstance(p, DTensor) for p in host.parameters()),
            "host_params_changed": any(not torch.equal(b, p.full_tensor()) for b, p in zip(before, host.parameters())),
            "map_tensors_are_dtensors": any(isinstance(t, DTensor) for t in [*fmap.parameters(), *fmap.buffers()]),
            "map_unchanged": all(torch.equal(v, reference[k]) for k, v in fmap.state_dict().items()),
            "probe_map_kept_per_rank": all(torch.equal(v, probe_reference[k])
                                           for k, v in host.probe.feature_map.state_dict().items()),
            "map_full_shapes": all(v.shape == reference[k].shape for k, v in fmap.state_dict().items()),
            "map_grads": [p.grad is not None for p in fmap.parameters()].count(True),
            "map_requires_grad": any(p.requires_grad for p in fmap.parameters()),
            "map_in_host_parameters": bool({id(t) for t in [*fmap.parameters(), *fmap.buffers()]}
                                           & {id(t) for t in [*host.parameters(), *host.buffers()]}),
            "saved_keys": sorted(state),
            "dcp_keys": sorted(saved),
        }
        with open(f"{out}.{rank}", "w") as fh:
            json.dump(result, fh)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fully_shard_host_trains_a_step_and_leaves_the_map_unsharded_unsaved_and_identical(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path / "result")), nprocs=WORLD, join=True)
    results = [json.loads((tmp_path / f"result.{r}").read_text()) for r in range(WORLD)]
    for r in results:
        assert r["loss_shape"] == [8]
        assert r["host_params_are_dtensors"] and r["host_params_changed"]  # sharded, and it trained
        assert r["loss_equal_across_ranks"]
        assert not r["map_tensors_are_dtensors"] and r["map_full_shapes"]  # not sharded
        assert r["probe_map_kept_per_rank"]  # never broadcast from rank 0
        assert r["map_unchanged"] and r["map_grads"] == 0 and not r["map_requires_grad"]  # frozen
        assert not r["map_in_host_parameters"]
        assert r["saved_keys"] == ["net.0.bias", "net.0.weight", "net.2.bias", "net.2.weight"]  # not saved
        assert r["dcp_keys"] == r["saved_keys"]
    assert results[0]["loss_after"] == results[1]["loss_after"]
