"""Shared fixtures: a small world and tiny random-weight open_clip models (both text layouts)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest
import torch

torch.manual_seed(0)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    from isa_demo.world import build_world

    return build_world(tmp_path_factory.mktemp("world") / "w", seed=0, size="small", workers=1)


@pytest.fixture(scope="session")
def tiny_vl():
    """Random-weight open_clip CLIP (built-in text tower layout)."""
    from isa_demo.vl import load_vl

    torch.manual_seed(0)
    return load_vl("isa-test-tiny", pretrained=None, device="cpu")


@pytest.fixture(scope="session")
def tiny_vl_custom():
    """Random-weight open_clip CustomTextCLIP (separate TextTransformer layout)."""
    from isa_demo.vl import load_vl

    torch.manual_seed(0)
    return load_vl("isa-test-tiny-custom", pretrained=None, device="cpu")


@pytest.fixture(scope="session")
def service(tiny_vl, small_world, tmp_path_factory):
    """The demo's service over the small world (tests/helpers.py tiny_service), shared by the app's tests."""
    from helpers import tiny_service

    return tiny_service(tiny_vl, small_world, tmp_path_factory.mktemp("app"))


@pytest.fixture(scope="session")
def example(service):
    """One of the service's example queries: ``{"image", "modifier", "mod_type"}``."""
    ex = service.inspector.example_queries(8)
    assert len(ex) == 8 and {"image", "modifier", "mod_type"} <= set(ex[0])
    return ex[0]
