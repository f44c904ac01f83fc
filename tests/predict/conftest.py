import pytest

from emanet.predict import ort


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    """``$EMANET_CACHE`` in one temporary folder for the onnxruntime tests: each graph is
    exported once."""
    folder = tmp_path_factory.mktemp("onnx_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ort.CACHE_ENV, str(folder))
        yield folder
