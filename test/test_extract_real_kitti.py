"""scripts/extract_real_kitti.py: which KITTI object frames may be extracted for training and held-out evaluation.

The development frames and the reserved evaluation frames are never used, and neither is any other frame of
their raw drives (neighbouring scans of one drive are near-copies of each other)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("extract_real_kitti", ROOT / "scripts" / "extract_real_kitti.py")
extract_real_kitti = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(extract_real_kitti)


def _devkit(drive_of_frame: dict[int, str], n: int = 7481) -> tuple[str, str]:
    """An object devkit mapping in which frame k lies on drive_of_frame.get(k, drive_k), listed in reverse order."""
    rows = [f"2011_09_26 {drive_of_frame.get(k, f'drive_{k:04d}')} {100 + k:010d}" for k in range(n)]
    mapping = "\n".join(reversed(rows)) + "\n"
    rand = ",".join(str(n - k) for k in range(n))  # 1-based line of frame k in the reversed mapping
    return mapping, rand


def test_object_frame_drives_follows_train_rand_into_train_mapping():
    mapping, rand = _devkit({})
    drives = extract_real_kitti.object_frame_drives(mapping, rand)
    assert drives[0] == ("drive_0000", 100)
    assert drives[17] == ("drive_0017", 117)


def test_frames_on_the_drive_of_a_development_frame_are_not_usable():
    mapping, rand = _devkit({1: "shared", 12: "shared"})  # 000001 is a development frame
    drives = extract_real_kitti.object_frame_drives(mapping, rand)
    assert extract_real_kitti.usable_frames(drives, range(11, 14)) == [11, 13]


def test_frames_on_the_drive_of_a_reserved_frame_are_not_usable():
    mapping, rand = _devkit({8: "reserved", 25: "reserved"})  # 000008 is reserved for independent evaluation
    drives = extract_real_kitti.object_frame_drives(mapping, rand)
    assert 25 not in extract_real_kitti.usable_frames(drives, range(22, 27))


def test_development_and_reserved_frames_themselves_are_never_usable():
    mapping, rand = _devkit({})
    drives = extract_real_kitti.object_frame_drives(mapping, rand)
    assert extract_real_kitti.usable_frames(drives, range(0, 12)) == [11]
