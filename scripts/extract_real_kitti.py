#!/usr/bin/env python3
"""Extract the real labelled KITTI training scans used by ``make model`` from public repositories at pinned commits.

Nothing extracted here is part of the repository: it is written under ``out/real/kitti_drives/`` (git-ignored).
KITTI data is licensed CC BY-NC-SA 3.0 (Geiger et al.); the repositories below only re-host unchanged KITTI files
(AB3DMOT adds a non-commercial research licence of its own), so everything trained on them is non-commercial.

Drives (every frame written has official KITTI labels, except the ``_unlabelled`` folder; see MODEL_CARD.md):

* ``2011_09_26_drive_0005`` = KITTI tracking training sequence 0000: 154 scans (binary PCD, x y z intensity
  0..1) from udacity/SFND_Lidar_Obstacle_Detection, labels and calibration from xinshuoweng/AB3DMOT;
* ``2011_09_26_drive_0048``: raw frames 2, 4, ..., 20 = KITTI object frames 006920 ... 001584; scans from
  udacity/SFND_Lidar_Obstacle_Detection (``data_1``), ``label_2``/calib from swordlidev/Vote3Deep_lidar;
* ``2011_09_26_drive_0052``: raw frames 7, 14, 21, 31 = object frames 001497, 004587, 001206, 001966; scans
  (KITTI .bin) from udacity/SFND_3D_Object_Tracking, labels/calib from swordlidev/Vote3Deep_lidar; its other 74
  scans (0-77) without labels go to ``2011_09_26_drive_0052_unlabelled`` (calibration of object frame 001497).

None of these drives holds a frame of the real development set (object frames 000000, 000001, 000006, 000007,
000009, 000010, 000021) or of the reserved evaluation frames (checked against the object devkit's
``train_mapping.txt``/``train_rand.txt``). Output per drive, KITTI object layout with the raw frame number as
file name: ``<out>/<drive>/{velodyne/NNNNNN.bin, label_2/NNNNNN.txt, calib/NNNNNN.txt}``.

Usage::

    python scripts/extract_real_kitti.py --out out/real/kitti_drives            # clones the repositories
    python scripts/extract_real_kitti.py --mirrors /work/.mirror --out ...      # uses local git directories

``--mirrors DIR`` reads ``DIR/<owner>+<name>/repo`` (bare git directories); otherwise each repository is cloned
(blobs on demand) into ``<out>/.src/``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

REPOS = {
    "lidar": ("udacity/SFND_Lidar_Obstacle_Detection", "ef15da2"),
    "tracking": ("udacity/SFND_3D_Object_Tracking", "3f28643"),
    "ab3dmot": ("xinshuoweng/AB3DMOT", "61f3bd7"),
    "vote3deep": ("swordlidev/Vote3Deep_lidar", "0abe3e8"),
}
DRIVE_0048 = {2: "006920", 4: "000623", 6: "005269", 8: "001460", 10: "006155", 12: "002489", 14: "006025",
              16: "006147", 18: "002443", 20: "001584"}
DRIVE_0052 = {7: "001497", 14: "004587", 21: "001206", 31: "001966"}


class Repo:
    """Read files of one repository at a pinned commit (``git show``), from a local git dir or a fresh clone."""

    def __init__(self, key: str, mirrors: Path | None, cache: Path) -> None:
        name, self.commit = REPOS[key]
        owner_name = name.replace("/", "+")
        if mirrors is not None and (mirrors / owner_name / "repo").exists():
            self.git_dir = mirrors / owner_name / "repo"
        else:
            self.git_dir = cache / f"{owner_name}.git"
            if not self.git_dir.exists():
                print(f"cloning {name} ...", flush=True)
                subprocess.run(["git", "clone", "--bare", "--filter=blob:none", f"https://github.com/{name}.git",
                                str(self.git_dir)], check=True)

    def read(self, path: str) -> bytes:
        return subprocess.run(["git", "--git-dir", str(self.git_dir), "show", f"{self.commit}:{path}"],
                              check=True, capture_output=True).stdout


def _pcd_to_bin(raw: bytes, tmp: Path) -> bytes:
    """A PCD file's x y z intensity as KITTI .bin bytes (float32 rows)."""
    from fastpillars_ros.pointcloud import read_points

    tmp.write_bytes(raw)
    pts = read_points(tmp, ("x", "y", "z", "intensity"))
    return np.ascontiguousarray(pts, dtype=np.float32).tobytes()


def _write(root: Path, stem: str, velodyne: bytes, label: str, calib: bytes) -> None:
    for sub in ("velodyne", "label_2", "calib"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "velodyne" / f"{stem}.bin").write_bytes(velodyne)
    (root / "label_2" / f"{stem}.txt").write_text(label)
    (root / "calib" / f"{stem}.txt").write_bytes(calib)


def extract(out: Path, mirrors: Path | None) -> dict[str, int]:
    cache = out / ".src"
    cache.mkdir(parents=True, exist_ok=True)
    lidar, tracking, ab, v3d = (Repo(k, mirrors, cache) for k in ("lidar", "tracking", "ab3dmot", "vote3deep"))
    tmp = cache / "scan.pcd"
    counts: dict[str, int] = {}

    # Drive 0005 = tracking sequence 0000: per-frame label lines without the frame and track id columns.
    rows: dict[int, list[str]] = {}
    for line in ab.read("scripts/KITTI/label/0000.txt").decode().splitlines():
        parts = line.split()
        if len(parts) >= 17:
            rows.setdefault(int(parts[0]), []).append(" ".join(parts[2:17]))
    calib = ab.read("data/KITTI/mini/training/calib/0000.txt")
    root = out / "2011_09_26_drive_0005"
    for frame in range(154):
        scan = lidar.read(f"src/sensors/data/pcd/data_2/{frame:010d}.pcd")
        _write(root, f"{frame:06d}", _pcd_to_bin(scan, tmp), "".join(r + "\n" for r in rows.get(frame, [])), calib)
    counts[root.name] = 154

    root = out / "2011_09_26_drive_0048"
    for frame, obj in DRIVE_0048.items():
        scan = lidar.read(f"src/sensors/data/pcd/data_1/{frame:010d}.pcd")
        _write(root, f"{frame:06d}", _pcd_to_bin(scan, tmp), v3d.read(f"training/label_2/{obj}.txt").decode(),
               v3d.read(f"data_object_calib/training/calib/{obj}.txt"))
    counts[root.name] = len(DRIVE_0048)

    root = out / "2011_09_26_drive_0052"
    for frame, obj in DRIVE_0052.items():
        scan = tracking.read(f"images/KITTI/2011_09_26/velodyne_points/data/{frame:010d}.bin")
        _write(root, f"{frame:06d}", scan, v3d.read(f"training/label_2/{obj}.txt").decode(),
               v3d.read(f"data_object_calib/training/calib/{obj}.txt"))
    counts[root.name] = len(DRIVE_0052)

    # The other 74 scans of drive 0052 have no labels (for pseudo-labelling); same drive, same calibration.
    root = out / "2011_09_26_drive_0052_unlabelled"
    calib = v3d.read(f"data_object_calib/training/calib/{DRIVE_0052[7]}.txt")
    unlabelled = [f for f in range(78) if f not in DRIVE_0052]
    for frame in unlabelled:
        scan = tracking.read(f"images/KITTI/2011_09_26/velodyne_points/data/{frame:010d}.bin")
        for sub in ("velodyne", "calib"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "velodyne" / f"{frame:06d}.bin").write_bytes(scan)
        (root / "calib" / f"{frame:06d}.txt").write_bytes(calib)
    counts[root.name] = len(unlabelled)
    tmp.unlink(missing_ok=True)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/real/kitti_drives", help="output folder (default out/real/kitti_drives)")
    parser.add_argument("--mirrors", default=None, help="folder of local git dirs <owner>+<name>/repo")
    args = parser.parse_args(argv)
    counts = extract(Path(args.out), Path(args.mirrors) if args.mirrors else None)
    for drive, n in counts.items():
        print(f"{drive}: {n} {'unlabelled' if drive.endswith('_unlabelled') else 'labelled'} scans")
    return 0


if __name__ == "__main__":
    sys.exit(main())
