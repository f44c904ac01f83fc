"""The tests mirror the package: ``tests/<subpackage>/test_<module>.py`` for
``emanet/<subpackage>/<module>.py``, and ``tests/test_<module>.py`` for the top-level modules
(``predict``, ``cli``). Small modules are tested through the module that uses them:
``io/keys.py`` in ``io/test_checkpoint.py`` and ``io/test_pretrained.py``, ``runtime/errors.py``
and ``runtime/logs.py`` in ``test_cli.py``, ``training/run.py`` in ``training/test_loop.py``.
Beside them: ``app/`` (the Gradio app, in-process, over HTTP and in a browser),
``test_notebooks.py``, ``test_docs.py``, ``test_layout.py`` (the layers), ``test_packaging.py``,
and ``test_cuda.py`` (the GPU path, skipped without CUDA). Shared fixtures are below.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.browser import CHROMIUM

# Two cores: keep intra-op threads from oversubscribing when tests spawn processes.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright, one per test module; no network or background
    services."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "CI must have Debian's chromium: .ci/run installs it"
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    args += ["--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=args)
        yield launched
        launched.close()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port():
    """``free_port()``: a TCP port on 127.0.0.1 that nothing listens on right now."""
    return _free_port


def _gloo_worker(rank: int, world: int, port: int, fn, args: tuple) -> None:
    # The variables torchrun sets, so that code reading them (the trainer) sees a real run.
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture(scope="session")
def run_gloo():
    """``run_gloo(fn, *args, world=2)``: ``fn(rank, world, *args)`` in ``world`` CPU processes
    joined in one gloo process group (torchrun's environment variables set); ``fn`` must be a
    module-level function, and an exception in any process fails the caller."""

    def run(fn, *args, world: int = 2) -> None:
        mp.spawn(_gloo_worker, args=(world, _free_port(), fn, args), nprocs=world, join=True)

    return run


@pytest.fixture
def train_interrupted(monkeypatch):
    """``train_interrupted(config)``: :func:`emanet.training.loop.train` on ``config`` stopped by a
    simulated crash (``KeyboardInterrupt``) at iteration 2, after its checkpoint there; the caller
    then resumes the run from ``config.work_dir``."""
    from emanet.training import loop as train_module

    real = train_module.poly_lr

    def crash_at_2(iteration, cfg):
        if iteration == 2:
            raise KeyboardInterrupt("simulated crash")
        return real(iteration, cfg)

    def run(config) -> None:
        monkeypatch.setattr(train_module, "poly_lr", crash_at_2)
        try:
            with pytest.raises(KeyboardInterrupt):
                train_module.train(config, progress=False)
        finally:
            monkeypatch.setattr(train_module, "poly_lr", real)

    return run
