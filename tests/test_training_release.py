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
    assert first[1].kwargs == {"steps": 8000} and release("isa-world-vit-v2")[1].kwargs == {}
    assert first[-1].label == "index"
    done = train_release("unused", "isa-world-vit", only=["vl", "isa"], device="cpu", dry_run=True)
    assert {d["status"] for d in done} == {"up to date"} and len(done) == 7


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
