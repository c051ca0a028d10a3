import pytest
import torch
import torch.nn.functional as F

from isa_demo.training.vl import export_safetensors
from isa_demo.vl import VLLoadError, load_vl

PROMPTS = ["a photo of * that make the circle red", "a photo of *", "* on a grey background"]


@pytest.mark.parametrize("fixture", ["tiny_vl", "tiny_vl_custom"])
def test_pseudo_tokens_match_encode_text(fixture, request):
    vl = request.getfixturevalue(fixture)
    ids = vl.tokenize(PROMPTS)
    ref = vl.model.encode_text(ids)
    star = vl.placeholder_embedding().view(1, 1, -1).expand(len(PROMPTS), 1, -1)
    out = vl.encode_with_pseudo_tokens(PROMPTS, star)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    # trimmed plain-text path agrees with open_clip too
    torch.testing.assert_close(vl.encode_text_tokens(ids), F.normalize(ref, dim=-1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_vl", "tiny_vl_custom"])
def test_multi_token_injection_equals_real_words(fixture, request):
    """Injecting the embeddings of 'red circle' as L=2 pseudo tokens == encoding the words."""
    vl = request.getfixturevalue(fixture)
    words = vl.tokenize(["red circle"])[0, 1:3]
    emb = vl.text.token_embedding.weight[words].unsqueeze(0)
    out = vl.encode_with_pseudo_tokens(["a photo of * on a grey background"], emb)
    ref = vl.model.encode_text(vl.tokenize(["a photo of red circle on a grey background"]))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_gradients_reach_pseudo_tokens(tiny_vl):
    s = torch.randn(2, 3, tiny_vl.word_dim, requires_grad=True)
    feats, tokens = tiny_vl.encode_with_pseudo_tokens(["a photo of *", "a photo of * that x"], s, return_tokens=True)
    assert feats.shape == (2, tiny_vl.embed_dim) and tokens.shape == (2, 3, tiny_vl.embed_dim)
    (feats.sum() + tokens.sum()).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_long_modifier_keeps_end_of_text(tiny_vl):
    long = "a photo of * that " + "make the circle red and " * 40
    s = torch.randn(1, 8, tiny_vl.word_dim)
    out = tiny_vl.encode_with_pseudo_tokens([long], s)
    assert torch.isfinite(out).all()


def test_missing_placeholder_is_an_error(tiny_vl):
    with pytest.raises(ValueError, match="placeholder"):
        tiny_vl.encode_with_pseudo_tokens(["no star here"], torch.randn(1, 1, tiny_vl.word_dim))


def test_images_and_local_features(tiny_vl, small_world):
    paths = sorted((small_world / "images" / "test").glob("*.png"))[:3]
    g = tiny_vl.encode_images(paths)
    assert g.shape == (3, tiny_vl.embed_dim)
    torch.testing.assert_close(g.norm(dim=-1), torch.ones(3))
    pooled, local = tiny_vl.encode_image_local(tiny_vl.images_to_tensor(paths))
    torch.testing.assert_close(pooled, g, rtol=1e-4, atol=1e-5)
    assert local.shape == (3, (32 // 8) ** 2, tiny_vl.embed_dim)


def test_checkpoint_round_trip_and_mismatch(tiny_vl, tmp_path):
    path = tmp_path / "tiny.safetensors"
    export_safetensors(tiny_vl.model, path, "isa-test-tiny", {"note": "test"})
    vl2 = load_vl("isa-test-tiny", str(path), device="cpu")
    assert vl2.identity()["checkpoint_sha256"] and vl2.identity()["name"] == "isa-test-tiny"
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(vl2.encode_image_tensor(x), tiny_vl.encode_image_tensor(x), rtol=2e-2, atol=2e-3)
    with pytest.raises(VLLoadError, match="saved for model 'isa-test-tiny'.*'isa-test-tiny-custom'"):
        load_vl("isa-test-tiny-custom", str(path), device="cpu")


def test_unknown_model_and_missing_file():
    with pytest.raises(VLLoadError, match="unknown open_clip model"):
        load_vl("no-such-model", None, device="cpu")
    with pytest.raises(VLLoadError, match="not found"):
        load_vl("isa-test-tiny", "/nonexistent/ckpt.safetensors", device="cpu")


def test_vl_training_runs_and_resumes(small_world, tmp_path):
    from isa_demo.training.vl import train_vl

    out = train_vl(str(small_world), out=str(tmp_path / "m.safetensors"), name="isa-test-tiny", epochs=0.2,
                   batch_size=32, state_path=str(tmp_path / "state.pt"), device="cpu", save_every=1)
    assert out.exists() and (tmp_path / "state.pt").exists()
    # rerun: already at the last step, exports again without training
    train_vl(str(small_world), out=str(tmp_path / "m.safetensors"), name="isa-test-tiny", epochs=0.2,
             batch_size=32, state_path=str(tmp_path / "state.pt"), device="cpu")
    load_vl("isa-test-tiny", str(out), device="cpu")


def test_vl_retrieval_table(tiny_vl, small_world):
    from isa_demo.bench.vl import evaluate_vl
    from isa_demo.world import World

    df = evaluate_vl(tiny_vl, World(small_world), "test")
    assert list(df["direction"]) == ["caption->image", "image->caption"]
    assert ((df[["R@1", "R@5", "R@10"]] >= 0) & (df[["R@1", "R@5", "R@10"]] <= 1)).all().all()
    assert (df["R@1"] <= df["R@10"]).all()


def test_vl_training_with_mix_scene_head_and_init(small_world, tmp_path):
    import json

    import open_clip

    from isa_demo.common import read_metadata
    from isa_demo.training.vl import train_vl

    torch.manual_seed(0)
    plain = open_clip.create_model("isa-test-tiny").visual.positional_embedding
    first = train_vl(str(small_world), out=str(tmp_path / "a.safetensors"), name="isa-test-tiny", epochs=0.1,
                     batch_size=32, state_path=str(tmp_path / "a.pt"), device="cpu", save_every=10_000, lr=0.0)
    # the defaults are v3's: the scene head beside the CLIP loss, a positional embedding 8x louder
    recipe = json.loads(read_metadata(first)["recipe"])
    assert recipe["scene_loss"] == 1.0 and recipe["pos_scale"] == 8.0 and recipe["mix"] == "position:3,shape:2"
    trained = load_vl("isa-test-tiny", str(first), device="cpu").model.visual.positional_embedding
    torch.testing.assert_close(trained.float(), (8 * plain).half().float())  # lr 0: only the scaling
    out = train_vl(str(small_world), out=str(tmp_path / "b.safetensors"), name="isa-test-tiny", epochs=0.1,
                   batch_size=32, state_path=str(tmp_path / "b.pt"), device="cpu", mix="position:3,shape:2",
                   scene_loss=1.0, init=str(first))
    vl = load_vl("isa-test-tiny", str(out), device="cpu")  # the scene head is not exported
    assert not any(k.startswith("scene_head") for k in vl.model.state_dict())


def test_mix_weighs_variants_and_negatives():
    import numpy as np

    from isa_demo.training.captions import perturb
    from isa_demo.training.vl import near_variant, parse_mix
    from isa_demo.world.scene import random_scene

    with pytest.raises(ValueError, match="TYPE:WEIGHT"):
        parse_mix("colour")
    with pytest.raises(ValueError, match="TYPE:WEIGHT"):
        parse_mix("hue:2")
    only_position = {**parse_mix(""), **dict.fromkeys(["colour", "shape", "size", "add", "remove", "background"], 0)}
    rng = np.random.default_rng(0)
    for _ in range(20):
        scene = random_scene(rng, 2)
        for other in (near_variant(scene, rng, only_position), perturb(scene, rng, only_position)):
            assert other["background"] == scene["background"]
            assert sorted((o["shape"], o["colour"], o["size"]) for o in other["objects"]) == \
                sorted((o["shape"], o["colour"], o["size"]) for o in scene["objects"])  # only cells differ


def test_binding_table(tiny_vl, small_world):
    from isa_demo.bench.vl import binding
    from isa_demo.world import World

    df = binding(tiny_vl, World(small_world), "test")
    assert set(df["change"]) <= {"colour", "shape", "size", "position", "add", "remove", "background"}
    assert ((df["caption_prefers_own"] >= 0) & (df["caption_prefers_own"] <= 1)).all() and (df["pairs"] > 0).all()


def test_explanations_decode_only_learned_words(tiny_vl, tmp_path):
    """A checkpoint records the words its model learned; pseudo words decode only into those,
    never into BPE rows the model never trained. The token embedding round-trips as int8 rows."""
    from isa_demo.vl.model import caption_vocabulary

    vocab = caption_vocabulary(tiny_vl.tokenizer, ["a red circle", "a blue star at the top"])
    path = tmp_path / "m.safetensors"
    export_safetensors(tiny_vl.model, path, "isa-test-tiny", {}, vocabulary=vocab)
    vl = load_vl("isa-test-tiny", str(path), device="cpu")
    assert vl.vocabulary.tolist() == vocab
    words = {w for row in vl.nearest_words(torch.randn(6, vl.word_dim), k=3) for w, _ in row}
    assert words <= {"a", "red", "circle", "blue", "star", "at", "the", "top"}
    table, back = tiny_vl.text.token_embedding.weight, vl.text.token_embedding.weight
    assert torch.allclose(back, table, atol=table.abs().max().item() / 100)
    assert load_vl("isa-test-tiny", "none", device="cpu").vocabulary is None  # random weights: the whole tokenizer


def test_checkpoint_stores_only_trained_token_rows(tiny_vl, tmp_path):
    """A built-in checkpoint keeps the token-embedding rows training updated; the others load as
    the seeded untrained rows, so every text of the training vocabulary encodes as before."""
    from isa_demo.vl.model import untrained_token_rows

    ids = tiny_vl.tokenize(["a red circle at the top"])[0]
    rows = sorted(set(ids[ids > 0].tolist()))
    path = tmp_path / "m.safetensors"
    export_safetensors(tiny_vl.model, path, "isa-test-tiny", {}, trained_rows=rows)
    vl = load_vl("isa-test-tiny", str(path), device="cpu")
    table = vl.text.token_embedding.weight
    assert torch.allclose(table[rows], tiny_vl.text.token_embedding.weight[rows], atol=1e-3)
    others = torch.ones(len(table), dtype=torch.bool)
    others[rows] = False
    assert torch.equal(table[others], untrained_token_rows(table.shape)[others])
    a = vl.encode_texts(["a red circle at the top"])
    b = tiny_vl.encode_texts(["a red circle at the top"])
    assert torch.allclose(a, b, atol=1e-2)


def test_token_text_decodes_byte_level_bpe(tiny_vl):
    """Pseudo words are shown as text, never as BPE's stand-in characters ('Ã©' for 'é'); a token
    that is only part of a character is shown as its bytes."""
    from isa_demo.vl.model import token_text

    tok = tiny_vl.tokenizer
    assert token_text(tok, tok.encode("circle")[0]) == "circle"
    assert [token_text(tok, i) for i in tok.encode("é")] == ["é"]
    pieces = [token_text(tok, i) for i in tok.encode("naïve 🔴")]
    assert "".join(p for p in pieces if not p.startswith("⟨")).replace(" ", "") in ("naïve", "naïve🔴")
    lone = token_text(tok, tok.encoder["Ã"])  # the first byte of a two-byte character, alone
    assert lone == "⟨c3⟩"
    every = [token_text(tok, i) for i in range(0, len(tok.decoder), 97)]
    stand_ins = set("ÃÂðŁĶĸ")  # what byte-level pieces look like undecoded
    undecoded = [w for w in every if stand_ins & set(w) and not w.startswith("⟨")]
    assert not undecoded, undecoded[:5]
