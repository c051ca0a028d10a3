"""Mixed precision choices, the release command's bookkeeping, and the explanation measurement."""
import pytest

from helpers import fake_method_kwargs
from isa_demo.training import precision as amp


def test_precision_choices():
    assert amp.resolve("fp32", "cpu") == "fp32"
    assert amp.resolve("auto", "cpu", convolutional=True) == "fp32"  # measured slower in bf16 on CPU
    assert amp.resolve("auto", "cpu") == ("bf16" if amp.cpu_has_bf16() else "fp32")
    with pytest.raises(ValueError, match="fp16 autocast is for CUDA"):
        amp.resolve("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        amp.resolve("half", "cpu")


def test_release_steps_and_shipped_state(capsys):
    """Each built-in VL model has its release; the first model's is complete and up to date."""
    from isa_demo.training.release import release, train_release

    first = release("isa-world-vit")
    assert [s.label for s in first][:3] == ["vl", "isa mobilenetv3_small_100", "isa symmetric"]
    assert first[1].kwargs == release("isa-world-vit-v3")[1].kwargs == {"steps": 8000}
    assert first[-1].label == "index"
    done = train_release("unused", "isa-world-vit", only=["vl", "isa"], device="cpu", dry_run=True)
    assert {d["status"] for d in done} == {"up to date"} and len(done) == 7


def test_release_vl_step_checks_the_recorded_recipe():
    """A VL checkpoint trained with another recipe is not up to date (v3's is train vl's defaults)."""
    from dataclasses import replace

    from isa_demo.training.release import release, up_to_date

    step = release("isa-world-vit-v3")[0]
    assert step.kwargs["pos_scale"] == 8.0 and step.kwargs["scene_loss"] == 1.0
    assert up_to_date(step, "isa-world-vit-v3")
    assert not up_to_date(replace(step, kwargs={**step.kwargs, "pos_scale": 1.0}), "isa-world-vit-v3")


def test_explain_stats_are_fractions(tiny_vl, small_world, tmp_path):
    from isa_demo.bench.explain import explain_stats
    from isa_demo.methods import create_method
    from isa_demo.world import World

    method = create_method("isa", tiny_vl, **fake_method_kwargs(tiny_vl, tmp_path)["isa"])
    stats = explain_stats(method, World(small_world), limit=6)
    assert stats["references"] == 6
    for key in ("word_names_reference", "word_names_any_attribute", "object_gets_peak", "peak_cells_distinct",
                "map_entropy"):
        assert 0.0 <= stats[key] <= 1.0
    assert stats["word_names_reference"] <= stats["word_names_any_attribute"]


def test_a_state_saved_for_another_vl_model_is_not_resumed(tmp_path):
    """Trainers' states record the VL model: resuming one for another model's run is refused (its
    weights fit the other model), and each built-in model but the default gets state files of its own."""
    import torch

    from isa_demo.errors import CheckpointError
    from isa_demo.training.state import load_state, output_paths, save_state

    a = {"name": "isa-world-vit", "pretrained": "builtin", "checkpoint_sha256": "a" * 64, "embed_dim": 256}
    b = {**a, "name": "isa-world-vit-v3", "checkpoint_sha256": "b" * 64}
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    save_state(tmp_path / "s.pt", 5, net, opt, extra={"vl": a})
    assert load_state(tmp_path / "s.pt", net, opt, vl=a)[0] == 5
    with pytest.raises(CheckpointError, match="isa-world-vit-v3.*delete it or pass another --state"):
        load_state(tmp_path / "s.pt", net, opt, vl=b)
    save_state(tmp_path / "old.pt", 5, net, opt)  # no VL recorded: refused too
    with pytest.raises(CheckpointError, match="an unknown model"):
        load_state(tmp_path / "old.pt", net, opt, vl=a)

    class VL:
        is_builtin = True

        def __init__(self, name):
            self.name = name

    first = output_paths("isa", "tag", VL("isa-world-vit"), tmp_path / "x.safetensors")[1]
    third = output_paths("isa", "tag", VL("isa-world-vit-v3"), tmp_path / "y.safetensors")[1]
    assert first.name == "tag.state.pt" and third.name == "tag--isa-world-vit-v3.state.pt"
