"""``emanet predict`` and ``emanet eval`` under torchrun (two gloo processes on the CPU): each
image predicted once, by the process that owns its files; the same files and the same mIoU as
one process; one summary, on rank 0."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emanet.cli import main
from emanet.data import generate_toy_folder
from emanet.deploy.batch import find_images, share_jobs
from emanet.io.checkpoint import save_checkpoint
from emanet.models.segmentor import build_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    data = generate_toy_folder(root / "data", train=0, val=5, size=(32, 64), seed=1)
    model = build_model("emanet_r18-d8_toycity", num_classes=7).eval()
    classes = json.loads((data / "classes.json").read_text())
    checkpoint = save_checkpoint(root / "m.pth", model, preset="emanet_r18-d8_toycity", **classes)
    return data, checkpoint


def _commands(data: Path, checkpoint: Path, out: Path) -> list[list[str]]:
    model = ["--model", str(checkpoint), "--device", "cpu"]
    return [
        ["predict", str(data / "images" / "val"), "--out", str(out / "pred"), *model],
        ["eval", "--data", str(data), "--out", str(out / "metrics.json"), *model,
         "--save-pred", str(out / "ids")],
    ]  # fmt: skip


def _worker(rank, world, data, checkpoint, out):
    out = Path(out) / f"rank{rank}"
    for command in _commands(Path(data), Path(checkpoint), Path(out).parent / "shared"):
        assert main(command) == 0
    out.mkdir(parents=True)  # proof that the rank ran to the end


def _files(folder: Path) -> dict[str, np.ndarray]:
    return {
        str(p.relative_to(folder)): np.array(Image.open(p)) for p in sorted(folder.rglob("*.png"))
    }


def test_two_processes_write_the_same_files_and_score_the_same(setup, tmp_path, run_gloo):
    data, checkpoint = setup
    for command in _commands(data, checkpoint, tmp_path / "one"):
        assert main(command) == 0
    run_gloo(_worker, str(data), str(checkpoint), str(tmp_path / "two"))
    one, two = tmp_path / "one", tmp_path / "two" / "shared"
    assert (tmp_path / "two" / "rank0").is_dir() and (tmp_path / "two" / "rank1").is_dir()
    for sub in ("pred", "ids"):
        ours, theirs = _files(one / sub), _files(two / sub)
        assert sorted(ours) == sorted(theirs) and len(ours) == (15 if sub == "pred" else 5)
        for name, array in ours.items():
            np.testing.assert_array_equal(array, theirs[name], err_msg=name)
    single = json.loads((one / "metrics.json").read_text())
    shared = json.loads((two / "metrics.json").read_text())
    assert shared["images"] == single["images"] == 5
    assert shared["confusion"] == single["confusion"]
    assert shared["mIoU"] == pytest.approx(single["mIoU"], abs=1e-9)


def test_jobs_are_shared_once_and_outputs_stay_with_one_owner(tmp_path):
    for name in ("a.png", "b.png", "c.png", "sub/a.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    jobs = find_images([tmp_path, tmp_path / "a.png"])  # the second a.png -> the same outputs
    shares = [share_jobs(jobs, rank, 3) for rank in range(3)]
    assert sorted(j.path for share in shares for j in share) == sorted(j.path for j in jobs)
    owners = {j.output_stem: r for r, share in enumerate(shares) for j in share}
    for rank, share in enumerate(shares):
        assert all(owners[j.output_stem] == rank for j in share)
