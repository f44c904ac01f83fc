"""Where checkpoints come from: local paths, zoo and bundled names, URLs downloaded once into
torch.hub's cache with their sha256 prefix checked, and what an offline machine is told."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import threading
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

from emanet.io import hub
from emanet.io.checkpoint import load_checkpoint, save_checkpoint
from emanet.io.hub import MODEL_ZOO, CheckpointError, resolve_checkpoint
from tests.io.test_checkpoint import (
    CLASSES,
    PALETTE,
    ZOO_FILES,
    TinySegmentor,
    assert_same_weights,
    trained_model,
)


def test_local_paths_resolve(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(1)}, path)
    assert resolve_checkpoint(path) == path
    assert resolve_checkpoint(str(path)) == path
    with pytest.raises(CheckpointError, match="not a file"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "missing.pth")


def test_unknown_name_lists_the_zoo():
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint("emanet_r999-d8_mars")
    message = str(info.value)
    assert "emanet_r999-d8_mars" in message
    for name in ZOO_FILES:
        assert name in message


def test_zoo_agrees_with_the_model_presets():
    from emanet.models.presets import PRESETS

    for name, url in MODEL_ZOO.items():
        assert PRESETS[name].url == url


def test_bundled_names_resolve(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "BUNDLED_DIR", tmp_path)
    torch.save({"a": torch.zeros(1)}, tmp_path / "emanet_r18-d8_toycity.pth")
    assert resolve_checkpoint("emanet_r18-d8_toycity") == tmp_path / "emanet_r18-d8_toycity.pth"
    with pytest.raises(CheckpointError, match="emanet_r18-d8_toycity"):
        resolve_checkpoint("no-such-preset")


def test_zoo_names_resolve_to_official_urls(tmp_path, monkeypatch):
    assert set(MODEL_ZOO) == set(ZOO_FILES)
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        Path(dst).write_bytes(b"stub")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    for name, file in ZOO_FILES.items():
        url = f"https://download.openmmlab.com/mmsegmentation/v0.5/emanet/{name}/{file}"
        assert MODEL_ZOO[name] == url
        path = resolve_checkpoint(name, progress=False)
        assert path == tmp_path / "hub" / "checkpoints" / file
        assert calls[-1] == (url, file[-12:-4])  # the sha256 prefix from the file name
    # Cached: a second resolution downloads nothing.
    resolve_checkpoint(next(iter(ZOO_FILES)), progress=False)
    assert len(calls) == len(ZOO_FILES)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep test output clean
        pass


@pytest.fixture
def http_root(tmp_path):
    """Serve tmp_path/served on 127.0.0.1; yields (base_url, served_dir, request_paths)."""
    served = tmp_path / "served"
    served.mkdir()
    requests: list[str] = []

    class Handler(_QuietHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served, requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _write_hashed(served: Path, stem: str, good: bool = True) -> tuple[str, bytes]:
    buffer = io.BytesIO()
    torch.save(trained_model().state_dict(), buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()[:8] if good else "deadbeef"
    name = f"{stem}-{digest}.pth"
    (served / name).write_bytes(data)
    return name, data


def test_download_verifies_hash_and_caches(http_root, tmp_path):
    base, served, requests = http_root
    name, data = _write_hashed(served, "tiny")
    cache = tmp_path / "cache"
    path = resolve_checkpoint(f"{base}/{name}", progress=False, model_dir=cache)
    assert path == cache / name and path.read_bytes() == data
    assert requests == [f"/{name}"]
    again = resolve_checkpoint(f"{base}/{name}", progress=False, model_dir=cache)
    assert again == path and len(requests) == 1
    assert sorted(p.name for p in cache.iterdir()) == [name]


def test_load_checkpoint_from_url_uses_torch_hub_dir(http_root, tmp_path, monkeypatch):
    base, served, _ = http_root
    model = trained_model()
    save_checkpoint(served / "toy.pth", model, preset="p", classes=CLASSES, palette=PALETTE)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    fresh = TinySegmentor()
    loaded = load_checkpoint(fresh, f"{base}/toy.pth", progress=False)
    assert loaded.preset == "p"
    assert_same_weights(fresh.state_dict(), model.state_dict())
    assert (tmp_path / "hub" / "checkpoints" / "toy.pth").is_file()


def test_wrong_hash_prefix_is_rejected_and_not_cached(http_root, tmp_path):
    base, served, _ = http_root
    name, _ = _write_hashed(served, "tiny", good=False)
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="sha256") as info:
        resolve_checkpoint(f"{base}/{name}", progress=False, model_dir=cache)
    assert f"{base}/{name}" in str(info.value)
    assert list(cache.iterdir()) == []


def test_http_error_is_a_checkpoint_error(http_root, tmp_path):
    base, _, _ = http_root
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="HTTP 404") as info:
        resolve_checkpoint(f"{base}/missing-0123abcd.pth", progress=False, model_dir=cache)
    assert f"{base}/missing-0123abcd.pth" in str(info.value)
    assert "local path" in str(info.value)
    assert list(cache.iterdir()) == []


def test_unreachable_host_gives_offline_instructions(tmp_path, free_port):
    url = f"http://127.0.0.1:{free_port()}/x-deadbeef.pth"  # nothing listens there
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(url, progress=False, model_dir=tmp_path / "cache")
    message = str(info.value)
    assert url in message
    assert "offline" in message and "by hand" in message and "local path" in message
    assert not any((tmp_path / "cache").iterdir())


def test_file_url_is_downloaded_into_the_cache(tmp_path):
    name, data = _write_hashed(tmp_path, "local")
    cache = tmp_path / "cache"
    path = resolve_checkpoint((tmp_path / name).as_uri(), progress=False, model_dir=cache)
    assert path == cache / name and path.read_bytes() == data


def test_zoo_download_failure_is_a_checkpoint_error(tmp_path, monkeypatch):
    def offline(url, dst, hash_prefix=None, progress=True):
        raise URLError(OSError("[Errno -3] Temporary failure in name resolution"))

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    name = "emanet_r50-d8_512x1024_80k_cityscapes"
    with pytest.raises(CheckpointError, match="name resolution") as info:
        load_checkpoint(TinySegmentor(), name, progress=False)
    assert MODEL_ZOO[name] in str(info.value)
