"""The :class:`isa_demo.methods.Method` contract, checked for every registered method (as timm
tests every registered model): a method added to ``METHODS`` is tested here without a line of
test code, or fails here until ``helpers.fake_method_kwargs`` can build it.

On the tiny random VL model with random-weight checkpoints: query features are ``(B, D)`` and
unit norm; the staged path (``encode_reference`` then ``compose``) is ``encode_queries``; a query
does not depend on the other queries of its batch; the declared inputs and stages hold; the
explanation is read from the reference encoding alone.
"""
import numpy as np
import pytest
import torch
from PIL import Image

from helpers import fake_method_kwargs
from isa_demo.methods import METHODS, Method, Reference, create_method

MODIFIERS = ["make the circle red", "remove the star", "add a small green square at the bottom right"]


@pytest.fixture(scope="module")
def method_kwargs(tiny_vl, tmp_path_factory):
    return fake_method_kwargs(tiny_vl, tmp_path_factory.mktemp("contract-checkpoints"))


@pytest.fixture(scope="module")
def references(small_world):
    """Three references in the three accepted forms: a path, a PIL image, an RGB array."""
    paths = sorted((small_world / "images" / "test").glob("*.png"))[:3]
    return [str(paths[0]), Image.open(paths[1]).convert("RGB"), np.asarray(Image.open(paths[2]).convert("RGB"))]


@pytest.fixture(scope="module", params=sorted(METHODS))
def method(request, tiny_vl, method_kwargs) -> Method:
    return create_method(request.param, tiny_vl, **method_kwargs.get(request.param, {}))


def _images(method, references):
    from isa_demo.common import load_image

    return [load_image(r) for r in references] if method.uses_image else None


def test_shape_and_unit_norm(method, references, tiny_vl):
    q = method.encode_queries(references, MODIFIERS)
    assert isinstance(method, Method)
    assert q.shape == (len(MODIFIERS), tiny_vl.embed_dim) and q.dtype == torch.float32
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(len(MODIFIERS)), atol=1e-5, rtol=0)
    assert method.encode_queries(references[:0], []).shape == (0, tiny_vl.embed_dim)


def test_staged_path_is_encode_queries(method, references, tiny_vl):
    q = method.encode_queries(references, MODIFIERS)
    with torch.no_grad():
        ref = method.encode_reference(_images(method, references))
        staged = method.compose(ref, MODIFIERS)
    assert isinstance(ref, Reference)
    torch.testing.assert_close(staged, q, atol=1e-6, rtol=1e-5)
    B = len(MODIFIERS)
    if method.num_words:  # pseudo-token methods: the words the text tower reads at '*'
        assert ref.words.shape == (B, method.num_words, tiny_vl.word_dim) and len(ref) == B
    else:
        assert ref.words is None
    if ref.attention is not None:
        assert ref.attention.shape[:2] == (B, method.num_words)
    if ref.features is not None:
        assert ref.features.shape == (B, tiny_vl.embed_dim)
    if not method.uses_image:
        assert ref.empty


def test_batch_independence(method, references):
    together = method.encode_queries(references, MODIFIERS)
    apart = torch.cat([method.encode_queries([r], [m]) for r, m in zip(references, MODIFIERS)])
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(method.encode_queries(references, MODIFIERS, batch_size=2), together,
                               atol=1e-5, rtol=1e-4)


def test_declared_inputs_and_stages(method, references):
    assert method.timing_stages and len(method.timing_stages) <= 2
    same_image = [references[0]] * 2
    if method.uses_text:
        q = method.encode_queries(same_image, MODIFIERS[:2])
        assert not torch.allclose(q[0], q[1])
    else:  # the modifier is ignored, even an empty one
        q = method.encode_queries(same_image, [MODIFIERS[0], ""])
        torch.testing.assert_close(q[0], q[1])
    if method.uses_image:
        q = method.encode_queries(references[:2], [MODIFIERS[0]] * 2)
        assert not torch.allclose(q[0], q[1])
    else:  # the image is ignored, and may be left out
        q = method.encode_queries(None, MODIFIERS[:1])
        torch.testing.assert_close(q, method.encode_queries(references[:1], MODIFIERS[:1]))


def test_explanation_comes_from_the_reference(method, references):
    with torch.no_grad():
        ref = method.encode_reference(_images(method, references))
    for i, modifier in enumerate(MODIFIERS):
        ex = method.explain_reference(ref, modifier, i)
        if not method.num_words:
            assert ex == {}
            continue
        assert len(ex["pseudo_words"]) == method.num_words and modifier in ex["prompt"]
        if "attention" in ex:
            assert ex["attention"].shape[0] == method.num_words
            np.testing.assert_allclose(ex["attention"], ref.attention[i].numpy())
        alone = method.explain(references[i], modifier)  # the one-image convenience: the same answer
        assert alone["pseudo_words"][0][0][0] == ex["pseudo_words"][0][0][0]
        assert alone["prompt"] == ex["prompt"]
