"""Process-group helpers on the CPU (gloo): decisions every process of a DDP run takes together."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mfd_loss.training.distributed import max_over_processes


def _agree(rank: int, world: int, rendezvous: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        local = [0, 15, 1][rank]  # e.g. rank 1 caught SIGTERM, rank 2 is out of time, rank 0 neither
        with open(f"{out}.{rank}", "w") as fh:
            json.dump(max_over_processes(local, "cpu"), fh)
    finally:
        dist.destroy_process_group()


def test_max_over_processes_gives_every_process_the_largest_value(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    mp.spawn(_agree, args=(3, str(tmp_path / "rendezvous"), str(tmp_path / "result")), nprocs=3, join=True)
    assert [json.loads((tmp_path / f"result.{r}").read_text()) for r in range(3)] == [15, 15, 15]


def test_max_over_processes_outside_a_group_is_the_value_itself():
    assert not dist.is_initialized()
    assert max_over_processes(True) == 1 and max_over_processes(0, torch.device("cpu")) == 0
