"""Device names, cores per process, unwrapping: guarded without a GPU by faking what CUDA says."""

import pytest
import torch
from torch import nn

from emanet import build_model
from emanet.runtime.device import resolve_device, unwrap, usable_cpus
from emanet.training.data import default_workers


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine with 4 GPUs whose current device is cuda:2, and no torchrun."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


def test_cuda_without_index_is_this_process_gpu(fake_cuda, monkeypatch):
    assert resolve_device("cuda") == torch.device("cuda", 2)  # the current device
    assert resolve_device(None) == torch.device("cuda", 2)
    assert resolve_device(torch.device("cuda")) == torch.device("cuda", 2)
    monkeypatch.setenv("LOCAL_RANK", "3")  # under torchrun: the local rank's GPU
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # an index is kept
    assert resolve_device("cpu") == torch.device("cpu")


def test_missing_gpus_are_clear_errors(fake_cuda, monkeypatch):
    with pytest.raises(ValueError, match=r"cuda:7.*4 CUDA device\(s\)"):
        resolve_device("cuda:7")
    monkeypatch.setenv("LOCAL_RANK", "5")
    with pytest.raises(ValueError, match="means cuda:5"):
        resolve_device("cuda")


def test_no_cuda(no_cuda):
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="sees no CUDA GPU; use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")


@pytest.mark.parametrize(
    "cores, local_world, expected_cpus, expected_workers",
    [(2, None, 2, 2), (16, None, 16, 8), (16, "4", 4, 4), (6, "4", 1, 1), (64, "2", 32, 8)],
)
def test_workers_follow_the_cores_each_process_may_use(
    monkeypatch, cores, local_world, expected_cpus, expected_workers
):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    if local_world is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)
    assert usable_cpus() == expected_cpus
    assert default_workers() == expected_workers


def test_unwrap_sees_through_data_parallel_and_compile():
    model = build_model("emanet_r18-d8_toycity")
    assert unwrap(model) is model
    assert unwrap(nn.DataParallel(model)) is model
    assert unwrap(torch.compile(nn.DataParallel(model))) is model  # compiles lazily: not run
