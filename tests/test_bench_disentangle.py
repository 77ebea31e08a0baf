"""tools/bench_disentangle.py end to end at a tiny size (demo photos only, one model, two steps)."""
import json
from pathlib import Path

import pytest

from scripts import load_script

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_disentangle.py"
TINY = ["--shared", "{tmp}/no_shared", "--steps", "2", "--batch-size", "2", "--quick", "--models", "tae", "--jobs", "1",
        "--size", "64", "--width", "4", "--embedding-dim", "8", "--streams", "2", "--stream-width", "4",
        "--tracks-per-identity", "1"]


def load_tool():
    return load_script(TOOL, "bench_disentangle")


@pytest.mark.usefixtures("one_torch_thread")
def test_the_benchmark_writes_its_tables_and_a_rerun_reuses_the_pretraining(tmp_path):
    tool = load_tool()
    args = ["--out", str(tmp_path / "run")] + [a.format(tmp=tmp_path) for a in TINY]
    assert tool.main(args) == 0
    results = json.loads((tmp_path / "run" / "bench_disentangle.json").read_text())
    assert set(results["models"]) == {"untrained", "tae"}
    assert results["data"]["train_identities"] and results["data"]["test_identities"]
    assert not set(results["data"]["train_identities"]) & set(results["data"]["test_identities"])
    tae = results["models"]["tae"]
    assert tae["pretraining"]["steps"] == 2 and tae["pretraining"]["cpu_minutes"] > 0
    assert {"action_au_f1", "pose_motion_r2", "action_motion_r2"} <= set(tae["probes"])
    assert tae["epe"]["zero_pose"] > 0
    assert "| tae |" in (tmp_path / "run" / "bench_disentangle.md").read_text()
    assert (tmp_path / "run" / "fields.png").stat().st_size > 0
    spent = (tmp_path / "run" / "pretraining.json").read_text()
    assert tool.main(args) == 0  # finished models are not pretrained again
    assert (tmp_path / "run" / "pretraining.json").read_text() == spent
