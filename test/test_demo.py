"""The demo (``make demo``) runs end to end in its short form and writes its summary and pictures."""

from __future__ import annotations

import pytest

from fastpillars_ros.cli import main as cli_main


@pytest.mark.ros
@pytest.mark.slow
def test_short_demo_replays_through_the_node_and_writes_pictures(tmp_path, capsys):
    assert cli_main(["demo", "--max-frames", "4", "--pictures", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "frames sent 4, answered 4" in out
    assert "=== demo summary" in out and "mean AP (R40)" in out
    for name in ("overview.png", "pr_curves.png", "frame_000.png", "frame_003.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    assert (tmp_path / "detections.mcap").exists()
