"""Device per job and precision per device (a2dpipe.accelerator), on the CPU with torch.cuda's answers mocked."""

from __future__ import annotations

import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from a2dpipe import accelerator
from a2dpipe.devices import select_device
from a2dpipe.trainer import Trainer


@pytest.fixture
def fake_gpus(monkeypatch, tmp_path):
    """A machine with ``count`` GPUs (default 2) as torch.cuda reports them; lock files in a folder of the test.
    Releases the claims this process made at the end."""
    def install(count=2, capability=(9, 0)):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=f"uuid-{i}"))
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
        monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setenv("A2DPIPE_GPU_LOCKS", str(tmp_path / "locks"))
    yield install
    while accelerator._HELD:
        accelerator._HELD.pop().close()


def test_concurrent_jobs_get_distinct_gpus_and_the_one_too_many_shares(fake_gpus, caplog):
    fake_gpus(count=2)
    first, second = select_device("auto"), select_device("cuda")  # each holds its claim, as two jobs would
    assert (first, second) == (torch.device("cuda", 0), torch.device("cuda", 1))
    assert torch.backends.cudnn.benchmark
    with caplog.at_level(logging.WARNING):
        third = select_device("auto")
    assert third.index in (0, 1) and "all 2 GPUs are held by other jobs" in caplog.text
    # a GPU named in the config is taken as it is, claimed or not
    assert select_device("cuda:1") == torch.device("cuda", 1)


def test_a_job_in_another_process_takes_the_gpu_this_one_leaves(fake_gpus, tmp_path):
    fake_gpus(count=2)
    assert accelerator.claim_gpu() == 0
    code = ("import torch, types\n"
            "torch.cuda.get_device_properties = lambda i: types.SimpleNamespace(uuid=f'uuid-{i}')\n"
            "from a2dpipe.accelerator import claim_gpu\n"
            "print(claim_gpu(count=2))\n")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == "1"
    accelerator._HELD.pop().close()  # this job ends: its GPU is free again
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == "0"


def test_one_visible_gpu_is_taken_without_a_claim(fake_gpus, tmp_path):
    fake_gpus(count=1)  # SLURM hands each job its own GPU (CUDA_VISIBLE_DEVICES)
    assert select_device("auto") == torch.device("cuda", 0) and not accelerator._HELD


@pytest.mark.parametrize(("capability", "expected"), [
    ((9, 0), torch.bfloat16),   # H100 / H200
    ((8, 0), torch.bfloat16),   # A100
    ((7, 5), torch.float16),    # T4
    ((7, 0), torch.float16),    # V100
    ((6, 0), None),             # P100: no tensor cores
    ((3, 7), None),             # K80
])
def test_precision_follows_the_compute_capability(fake_gpus, capability, expected):
    fake_gpus(capability=capability)
    assert accelerator.autocast_dtype(torch.device("cuda", 0), amp=True) == expected
    assert accelerator.autocast_dtype(torch.device("cuda", 0), amp=False) is None
    assert accelerator.autocast_dtype(torch.device("cpu"), amp=True) is None


def _step_trainer(dtype):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    x = torch.randn(8, 4)
    trainer = Trainer(model, optimizer, scheduler, lambda step: {"loss": model(x).float().pow(2).mean()},
                      iterations=3, amp_device="cpu", amp_dtype=dtype)
    return trainer, model


def test_float16_training_scales_the_loss_and_bfloat16_does_not():
    trainer, model = _step_trainer(torch.float16)
    before = model.weight.detach().clone()
    assert trainer.scaler.is_enabled() and trainer.train()
    assert trainer.scaler.get_scale() > 0 and not torch.equal(before, model.weight)
    assert all(r["loss"] == r["loss"] for r in trainer.history)  # finite
    trainer, _ = _step_trainer(torch.bfloat16)
    assert not trainer.scaler.is_enabled() and trainer.train()
