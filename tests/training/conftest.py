"""Shared by the trainer's tests: a small toy city and a fast config over it."""

import pytest

from emanet.data.toycity import generate_toycity
from emanet.training.config import TrainConfig


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    return generate_toycity(tmp_path_factory.mktemp("city"), train=6, val=2, size=(48, 96), seed=3)


def config(city, work_dir, **kw):
    base = dict(
        preset="emanet_r18-d8_toycity",
        data_root=str(city),
        work_dir=str(work_dir),
        iters=4,
        batch_size=2,
        crop_size=(32, 48),
        train_scale=(96, 48),
        checkpoint_interval=2,
        log_interval=1,
        num_workers=0,
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)
