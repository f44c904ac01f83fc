"""What the browser tests share: Debian's chromium and the marks of a browser test module (the
``browser`` fixture is in ``conftest.py``)."""

import os
import shutil

import pytest

#: Debian's chromium, the one browser the tests drive (Playwright never downloads one).
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: The marks of a module of browser tests: slow, and skipped without chromium except on CI
#: (where .ci/run installs it, so that a missing browser fails).
BROWSER_TESTS = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM and os.environ.get("CI") != "true",
        reason="Debian's chromium is not installed (apt-get install chromium)",
    ),
]
