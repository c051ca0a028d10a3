import pytest
import torch

from isa_demo.bench.ablation import _recipe
from isa_demo.common import read_metadata
from isa_demo.methods import QueryError, create_method
from isa_demo.models import (
    SYMMETRIC,
    AdaptiveTokenLearner,
    BackboneError,
    CheckpointError,
    EncoderConfig,
    QueryEncoder,
    check_backbone_name,
)
from isa_demo.training.isa import train_isa
from isa_demo.training.losses import gcd_hard, info_nce, lar_late, lar_vocab, nearest_neighbours, word_similarity
from isa_demo.training.vl import export_safetensors
from isa_demo.vl import load_vl
from isa_demo.vl.model import world_vocabulary


def test_atl_shapes_and_maps():
    atl = AdaptiveTokenLearner(in_channels=16, word_dim=24, num_tokens=3, dim=32, heads=4, grid=4)
    words, maps = atl(torch.randn(2, 16, 5, 5))  # another grid than the positional table: interpolated
    assert words.shape == (2, 3, 24) and maps.shape == (2, 3, 5, 5)
    torch.testing.assert_close(maps.sum(dim=(-1, -2)), torch.ones(2, 3))


def test_unknown_backbone_lists_close_names():
    with pytest.raises(BackboneError, match="close names: mobilenetv3_small_100"):
        check_backbone_name("mobilenetv3_smal_100")


def test_lite0_loads_real_imagenet_weights():
    from isa_demo.models import create_backbone

    model, info = create_backbone("tf_efficientnet_lite0")
    assert info["imagenet"] and info["mean"] == [0.5, 0.5, 0.5]
    other, _ = create_backbone("tf_efficientnet_lite0", imagenet=False)
    assert not torch.equal(model.conv_stem.weight, other.conv_stem.weight)


def test_lar_losses():
    h = torch.randn(4, 2, 8)
    p = torch.nn.functional.normalize(torch.randn(4, 5, 8), dim=-1)
    assert lar_late(h, p, 0.1).ndim == 0
    vocab = torch.randn(10, 8)
    assert lar_vocab(vocab[:3], vocab).item() == pytest.approx(0.0, abs=1e-6)
    # diversity: two identical words give cos^2 = 1 on both off-diagonal pairs, orthogonal ones 0
    same, apart = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]]), torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])
    assert word_similarity(same).item() == pytest.approx(1.0) and word_similarity(apart).item() == 0.0


def test_hard_negatives_are_the_nearest_others_and_only_add_to_the_sentence_side():
    g = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.7, 0.7]])
    g = torch.nn.functional.normalize(g, dim=-1)
    knn = nearest_neighbours(g, 2, chunk=2)  # chunked: the self-exclusion must hold across chunks
    assert knn.shape == (5, 2) and not (knn == torch.arange(5)[:, None]).any()
    assert knn[0, 0] == 1 and knn[2, 0] == 3
    u, v = g[:3], g[:3]
    none = gcd_hard(u, v, torch.empty(0, 2), 0.1)
    torch.testing.assert_close(none, info_nce(u @ v.T / 0.1))
    assert gcd_hard(u, v, g[knn[:3].reshape(-1)], 0.1) > none  # look-alikes make the task harder
    one = gcd_hard(u[:1], v[:1], g[[0, 1]], 0.1)  # g[1] is within 0.98 of g[0]: a duplicate, not a negative
    torch.testing.assert_close(one, torch.tensor(0.0))


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny_vl):
    path = tmp_path_factory.mktemp("vl") / "tiny.safetensors"
    export_safetensors(tiny_vl.model, path, "isa-test-tiny", {})
    return str(path)


@pytest.mark.parametrize("backbone,lar,hard,word_norm,diversity", [("mobilenetv3_small_100", "late", 0, "free", 0.0),
                                                                   (SYMMETRIC, "vocab", 3, "vocab", 1.0)])
def test_train_save_load_compose(small_world, tiny_ckpt, tmp_path, backbone, lar, hard, word_norm, diversity):
    out = train_isa(str(small_world), backbone, out=str(tmp_path / "enc.safetensors"), num_tokens=2, steps=2,
                    batch_size=8, images=32, lar=lar, state_path=str(tmp_path / "s.pt"), device="cpu",
                    vl_name="isa-test-tiny", vl_pretrained=tiny_ckpt, hard_negatives=hard, word_norm=word_norm,
                    diversity=diversity)
    vl = load_vl("isa-test-tiny", tiny_ckpt, device="cpu")
    assert _recipe(out) == (2, lar, 2, 32)  # what `bench isa-ablation --reuse-shipped` matches arms on
    assert float(read_metadata(out).get("diversity", 0)) == diversity  # the recipe records the term
    method = create_method("isa", vl, backbone=backbone, checkpoint=str(out))
    ref = sorted((small_world / "images" / "test").glob("*.png"))[0]
    q = method.encode_queries([ref, ref], ["make the circle red", "remove the star"])
    assert q.shape == (2, vl.embed_dim)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(q[0], q[1])
    ex = method.explain(ref, "make the circle red")
    assert len(ex["pseudo_words"]) == 2 and ex["attention"].shape[0] == 2
    norms = method.encode_reference([ref]).words.norm(dim=-1)
    if word_norm == "vocab":  # every pseudo word at the mean norm of the words the VL model learned
        vocab = vl.text.token_embedding.weight[vl.vocabulary if vl.vocabulary is not None else
                                               torch.as_tensor(world_vocabulary(vl.tokenizer))]
        target = vocab.norm(dim=-1).mean().item()
        assert method.encoder.cfg.word_norm == pytest.approx(target, abs=1e-4)
        torch.testing.assert_close(norms, torch.full_like(norms, method.encoder.cfg.word_norm))
    else:
        assert method.encoder.cfg.word_norm == 0
    with pytest.raises(QueryError, match="empty"):
        method.encode_queries([ref], ["   "])
    # another composition template; without {modifier} the modifier is dropped (the inversion alone)
    alone = create_method("isa", vl, backbone=backbone, checkpoint=str(out), prompt="a photo of *")
    qa = alone.encode_queries([ref, ref], ["make the circle red", "remove the star"])
    torch.testing.assert_close(qa[0], qa[1])
    assert alone.identity()["prompt"] == "a photo of *" and "prompt" not in method.identity()
    assert alone.explain(ref, "x")["prompt"] == "a photo of S"
    with pytest.raises(QueryError, match="does not read the"):
        create_method("isa", vl, backbone=backbone, checkpoint=str(out), prompt="a photo of *, {modifier}")
    # refusals name what was expected and what was found
    with pytest.raises(CheckpointError, match="expected a checkpoint for backbone 'resnet18', found"):
        QueryEncoder.load(out, vl, backbone="resnet18")
    with pytest.raises(CheckpointError, match="expected L=8 pseudo tokens, found L=2"):
        QueryEncoder.load(out, vl, num_tokens=8)
    other_vl = load_vl("isa-test-tiny", None, device="cpu")
    with pytest.raises(CheckpointError, match="trained for VL model isa-test-tiny"):
        QueryEncoder.load(out, other_vl)


@pytest.mark.parametrize("prompt", ["a photo of {modifier}", "* and * {modifier}", "a photo of * {other}",
                                    "* {modifier} {modifier}"])
def test_bad_prompt_template_is_refused(prompt):
    from isa_demo.methods.base import check_prompt

    with pytest.raises(QueryError, match="must contain one"):
        check_prompt(prompt)


def test_symmetric_needs_vl():
    with pytest.raises(ValueError, match="needs the VL model"):
        QueryEncoder(EncoderConfig(backbone=SYMMETRIC, word_dim=8))


def test_checkpoint_storage_round_trip(tmp_path):
    """int8 per output channel for large weights, fp16 for the rest: within half a quantization
    step of the original, and a fraction of the fp16 size."""
    import os

    from safetensors.torch import save_file

    from isa_demo.common import pack_state, unpack_state

    enc = QueryEncoder(EncoderConfig(backbone="resnet18", word_dim=24), imagenet_init=False)
    state = enc.state_dict()
    packed = pack_state(state)
    w = state["backbone.layer4.1.conv2.weight"]
    assert packed["backbone.layer4.1.conv2.weight"].dtype == torch.int8
    assert packed["atl.norm.weight"].dtype == torch.float16  # small tensors stay fp16
    back = unpack_state(packed)
    assert set(back) == set(state)
    step = w.abs().amax(dim=(1, 2, 3)) / 127
    assert ((back["backbone.layer4.1.conv2.weight"] - w).abs() <= step.view(-1, 1, 1, 1) / 2 + 1e-7).all()
    save_file(packed, str(tmp_path / "int8.safetensors"))
    fp16 = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_file(fp16, str(tmp_path / "fp16.safetensors"))
    assert os.path.getsize(tmp_path / "int8.safetensors") < 0.55 * os.path.getsize(tmp_path / "fp16.safetensors")


def test_cli_train_isa_random_vl_weights(small_world, tmp_path, monkeypatch, capsys):
    """`train isa --vl-pretrained none` trains against random VL weights (it used to end in an
    open_clip traceback) and, not being the built-in model, never writes into assets/."""
    from isa_demo.cli import main
    from isa_demo.training import state

    monkeypatch.setattr(state, "RUNS_DIR", tmp_path / "runs")
    rc = main(["train", "isa", "--backbone", "resnet18", "--vl-model", "isa-test-tiny", "--vl-pretrained", "none",
               "--world", str(small_world), "--steps", "2", "--images", "16", "--batch-size", "8", "-L", "2",
               "--device", "cpu"])
    assert rc == 0
    out = tmp_path / "runs" / "isa" / "resnet18_L2_none_2--isa-test-tiny.safetensors"
    assert out.exists() and (tmp_path / "runs" / "isa" / "resnet18_L2_none_2--isa-test-tiny.state.pt").exists()
    assert main(["train", "isa", "--backbone", "resnet1800", "--world", str(small_world)]) == 2
    assert "unknown timm backbone 'resnet1800'" in capsys.readouterr().err
