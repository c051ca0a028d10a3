"""Accuracy-vs-cost figures from small hand-written results tables."""
import pandas as pd
import pytest

from isa_demo.bench.plots import (
    ResultsMissing,
    accuracy_figures,
    accuracy_vs_cost,
    join_accuracy_efficiency,
    write_figures,
)
from isa_demo.cli import main


@pytest.fixture
def results(tmp_path):
    pd.DataFrame([
        {"method": "image-only", "backbone": None, "R@1": 5.0},
        {"method": "sum", "backbone": None, "R@1": 12.0},
        {"method": "isa", "backbone": "mobilenetv3_small_100", "R@1": 30.0},
        {"method": "isa", "backbone": "efficientnet_b0", "R@1": 33.0},
        {"method": "caption-oracle", "backbone": None, "R@1": 60.0},
    ]).to_csv(tmp_path / "accuracy.csv", index=False)
    rows = []
    for method, backbone, gflops, ms in [("vl-image-tower", "", 1.5, 9.0), ("sum", "", 1.5, 9.5),
                                         ("isa", "mobilenetv3_small_100", 0.06, 2.0),
                                         ("isa", "efficientnet_b0", 0.4, 6.0)]:
        for setting in ("world", "real-224"):
            for stage, scale in (("query_image_encoder", 1.0), ("text_encoder", 3.0)):
                rows.append({"model": f"{method}:{backbone}", "method": method, "backbone": backbone or None,
                             "setting": setting, "stage": stage, "params": 1e6, "gflops": gflops * scale,
                             "cpu_ms_p50": ms * scale * (4 if setting == "real-224" else 1), "gpu_ms_p50": 0.5,
                             "peak_mem_mb": 10.0})
    pd.DataFrame(rows).to_csv(tmp_path / "efficiency.csv", index=False)
    return tmp_path


def test_join_picks_world_query_image_encoder_rows(results):
    joined = join_accuracy_efficiency(pd.read_csv(results / "accuracy.csv"), pd.read_csv(results / "efficiency.csv"))
    assert len(joined) == 4  # the oracle has no cost row
    row = joined[joined["backbone"] == "mobilenetv3_small_100"].iloc[0]
    assert (row["gflops"], row["cpu_ms_p50"]) == (0.06, 2.0)
    assert joined[joined["method"] == "sum"].iloc[0]["cpu_ms_p50"] == 9.5  # its own row wins
    assert joined[joined["method"] == "image-only"].iloc[0]["cpu_ms_p50"] == 9.0  # the VL image tower's row


def test_figures_log_x_highlight_and_ceiling(results):
    figs = accuracy_figures(results, metric="R@1", highlight="mobilenetv3_small_100")
    assert set(figs) == {"gflops", "cpu_ms_p50"}
    fig = figs["gflops"]
    assert fig.layout.xaxis.type == "log"
    hl = [t for t in fig.data if "highlighted" in t.name]
    assert len(hl) == 1 and list(hl[0].x) == [0.06] and list(hl[0].text) == ["isa:mobilenetv3_small_100"]
    assert any(getattr(s, "y0", None) == 60.0 for s in fig.layout.shapes)  # oracle line
    assert sorted(x for t in figs["cpu_ms_p50"].data for x in t.x) == [2.0, 6.0, 9.0, 9.5]


def test_missing_tables_say_what_to_run(tmp_path, results):
    with pytest.raises(ResultsMissing, match="bench accuracy"):
        accuracy_figures(tmp_path / "nothing")
    (results / "efficiency.csv").unlink()
    with pytest.raises(ResultsMissing, match="efficiency.csv"):
        accuracy_figures(results)
    with pytest.raises(ValueError, match="R@7"):
        accuracy_vs_cost(pd.DataFrame({"gflops": [1.0], "R@1": [1.0]}), metric="R@7")


def test_cli_plot_writes_html(results, tmp_path, capsys):
    out = tmp_path / "fig" / "acc.html"
    assert main(["bench", "plot", "--results", str(results), "--out", str(out), "--highlight", "efficientnet_b0"]) == 0
    html = out.read_text()
    assert "isa:efficientnet_b0" in html and html.count("plotly-graph-div") >= 2
    assert main(["bench", "plot", "--results", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "bench accuracy" in capsys.readouterr().err
    assert write_figures({}, tmp_path / "empty.html")[0].exists()


def test_cli_plot_writes_png(results, tmp_path):
    pytest.importorskip("kaleido")
    import shutil

    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome")):
        pytest.skip("PNG export needs a Chrome/Chromium for kaleido")
    out = tmp_path / "acc.png"
    assert main(["bench", "plot", "--results", str(results), "--out", str(out)]) == 0
    pngs = sorted(tmp_path.glob("acc_*.png"))
    assert [p.name for p in pngs] == ["acc_cpu_ms_p50.png", "acc_gflops.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
