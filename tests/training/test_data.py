"""The training data stream: workers finish CPU batches as the step would."""

import torch

from emanet.models.presets import get_preset
from emanet.training.data import build_loaders
from emanet.training.run import Run
from tests.training.conftest import config


def test_workers_finish_cpu_batches_as_the_step_would(city, tmp_path):
    cfg = config(city, tmp_path, num_workers=0)
    preset = get_preset(cfg.preset)
    run = Run(rank=0, world=1, device=torch.device("cpu"), precision="fp32")
    loader, transform, _ = build_loaders(cfg, preset, run)
    assert loader.dataset.finish  # CPU training: the workers finish the crops
    finished = next(iter(loader))
    loader.dataset.finish = False  # as for a GPU: uint8 crops, finished by the step
    images, labels, params = next(iter(loader))
    assert images.dtype == torch.uint8 and finished[0].dtype == torch.float32
    assert torch.equal(transform.finish(images, params), finished[0])  # bit for bit
    assert torch.equal(labels, finished[1]) and torch.equal(params, finished[2])
