"""Real-browser tests: headless Chromium (Debian package ``chromium``) driven by Playwright.

Install (never ``playwright install``; the Debian browser is used)::

    apt-get update && apt-get install -y chromium
    pip install playwright

Tests here are marked ``browser`` and skip when either is missing. Screenshots go to
``test-artifacts/``.
"""
import os
import shutil
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives a real headless Chromium (needs chromium + playwright)")


def chromium_path():
    for cand in (os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser")):
        if cand and os.path.exists(cand):
            return cand
    return None


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    exe = chromium_path()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="session")
def artifacts():
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def app_url(tiny_vl, small_world, tmp_path_factory):
    from helpers import serve, tiny_service

    service = tiny_service(tiny_vl, small_world, tmp_path_factory.mktemp("browser-app"))
    demo, url = serve(service)
    yield url, service
    demo.close()
