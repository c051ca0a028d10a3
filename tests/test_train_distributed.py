"""`torchrun` data parallel training on CPUs (gloo): two processes share the feature cache by rank
and train one model (20-40 s: two processes each start torch and open_clip)."""
import json
import os
import subprocess
import sys

from helpers import TINY_BACKBONE, write_shards
from isa_demo.common import read_metadata
from isa_demo.settings import REPO
from isa_demo.training.vl import export_safetensors


def test_torchrun_two_ranks_share_the_cache(tiny_vl, tmp_path):
    ckpt = tmp_path / "tiny.safetensors"
    export_safetensors(tiny_vl.model, ckpt, "isa-test-tiny", {})
    write_shards(tmp_path / "shards", 3, 6)
    out = tmp_path / "enc.safetensors"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "ISA_DEMO_RUNS": str(tmp_path / "runs")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "isa_demo", "train", "isa", "--backbone", TINY_BACKBONE, "--data",
           str(tmp_path / "shards" / "{00000..00002}.tar"), "--vl-model", "isa-test-tiny", "--vl-pretrained",
           str(ckpt), "--steps", "3", "--batch-size", "4", "-L", "2", "--image-size", "32", "--device", "cpu",
           "--workers", "0", "--out", str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = read_metadata(out)
    assert int(meta["ranks"]) == 2 and int(meta["train_images"]) == 18 and int(meta["steps"]) == 3
    assert json.loads(meta["data"])["kind"] == "webdataset"
    parts = list((tmp_path / "runs" / "feature-cache").glob("*/global/*.pt"))
    assert len(parts) == 3  # rank 0 encoded shards 0 and 2, rank 1 shard 1
