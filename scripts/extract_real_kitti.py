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
  scans (0-77) without labels go to ``2011_09_26_drive_0052_unlabelled`` (calibration of object frame 001497);
* ``2011_09_26_drive_0001``: its 51 object frames (raw frame -> object frame from the object devkit's mapping),
  scans from JamesWang007/kitti_object_vis (``data/2011_09_26/2011_09_26_drive_0001_sync``), labels/calib from
  swordlidev/Vote3Deep_lidar;
* ``kitti_objects_mixed``: object frames 000011-000029 of 13 other drives (scans from WenyiZhang0311/kitti_tiny_3d,
  official labels/calib from swordlidev/Vote3Deep_lidar), a held-out set of many places, named by object frame.

No frame of a drive that holds a frame of the real development set (object frames 000000, 000001, 000006,
000007, 000009, 000010, 000021) or a reserved evaluation frame (000002-000005, 000008, 000134, 002155, 007347)
is extracted: the drives come from the object devkit's ``train_mapping.txt``/``train_rand.txt`` (in
swordlidev/Vote3Deep_lidar), checked here at every run. Output per drive, KITTI object layout with the raw frame
number (object frame number for ``kitti_objects_mixed``) as file name:
``<out>/<drive>/{velodyne/NNNNNN.bin, label_2/NNNNNN.txt, calib/NNNNNN.txt}``.

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
    "objvis": ("JamesWang007/kitti_object_vis", "d472ee2"),
    "tiny3d": ("WenyiZhang0311/kitti_tiny_3d", "dbd974d"),
}
DRIVE_0048 = {2: "006920", 4: "000623", 6: "005269", 8: "001460", 10: "006155", 12: "002489", 14: "006025",
              16: "006147", 18: "002443", 20: "001584"}
DRIVE_0052 = {7: "001497", 14: "004587", 21: "001206", 31: "001966"}
# Object frames of the real development set and the reserved evaluation frames: no frame of their drives is used.
DEVELOPMENT_FRAMES = (0, 1, 6, 7, 9, 10, 21)
RESERVED_FRAMES = (2, 3, 4, 5, 8, 134, 2155, 7347)
TINY3D_CANDIDATES = range(11, 30)  # the object frames kitti_tiny_3d holds beyond the development/reserved ones


def object_frame_drives(mapping: str, rand: str) -> list[tuple[str, int]]:
    """(raw drive, raw frame) of every KITTI object training frame, from the object devkit's mapping files.

    ``train_rand.txt`` holds, for object frame k, the 1-based line of ``train_mapping.txt`` ("date drive frame").
    """
    lines = [line.split() for line in mapping.splitlines() if line.strip()]
    return [(lines[int(i) - 1][1], int(lines[int(i) - 1][2])) for i in rand.replace(",", " ").split()]


def excluded_drives(drives: list[tuple[str, int]]) -> set[str]:
    """The raw drives that hold a development or reserved frame: none of their scans may be trained or tuned on."""
    return {drives[k][0] for k in DEVELOPMENT_FRAMES + RESERVED_FRAMES}


def usable_frames(drives: list[tuple[str, int]], candidates: range) -> list[int]:
    """The candidate object frames on no drive of a development or reserved frame (never those frames themselves)."""
    banned = excluded_drives(drives)
    return [k for k in candidates if drives[k][0] not in banned]


class Repo:
    """Read files of one repository at a pinned commit (``git show``), from a local git dir or a fresh clone."""

    def __init__(self, key: str, mirrors: Path | None, cache: Path, repos: dict[str, tuple[str, str]] | None = None
                 ) -> None:
        name, self.commit = (REPOS if repos is None else repos)[key]
        owner_name = name.replace("/", "+")
        if mirrors is not None and (mirrors / owner_name / "repo").exists():
            self.git_dir = mirrors / owner_name / "repo"
        else:
            self.git_dir = cache / f"{owner_name}.git"
            if not self.git_dir.exists():
                print(f"cloning {name} ...", flush=True)
                subprocess.run(["git", "clone", "--bare", "--filter=blob:none", f"https://github.com/{name}.git",
                                str(self.git_dir)], check=True)
            git = ["git", "--git-dir", str(self.git_dir)]
            # A commit that no branch reaches (e.g. only a pull request's ref) is not cloned: fetch it by its id.
            if subprocess.run([*git, "cat-file", "-e", f"{self.commit}^{{commit}}"], capture_output=True).returncode:
                subprocess.run([*git, "fetch", "--filter=blob:none", "origin", self.commit], check=True)

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
    lidar, tracking, ab, v3d, objvis, tiny3d = (
        Repo(k, mirrors, cache) for k in ("lidar", "tracking", "ab3dmot", "vote3deep", "objvis", "tiny3d"))
    drives = object_frame_drives(v3d.read("devkit_object/mapping/train_mapping.txt").decode(),
                                 v3d.read("devkit_object/mapping/train_rand.txt").decode())
    banned = excluded_drives(drives)
    used = {f"2011_09_26_drive_{d}_sync" for d in ("0001", "0005", "0048", "0052")}
    if used & banned:
        raise SystemExit(f"{sorted(used & banned)} holds a development or reserved frame: not extracted")
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

    # Drive 0001: every object frame of it (51 of its 108 scans), scans from kitti_object_vis's sync folder.
    root = out / "2011_09_26_drive_0001"
    frames = [(raw, k) for k, (drive, raw) in enumerate(drives) if drive == "2011_09_26_drive_0001_sync"]
    for raw, k in frames:
        scan = objvis.read(f"data/2011_09_26/2011_09_26_drive_0001_sync/velodyne_points/data/{raw:010d}.bin")
        _write(root, f"{raw:06d}", scan, v3d.read(f"training/label_2/{k:06d}.txt").decode(),
               v3d.read(f"data_object_calib/training/calib/{k:06d}.txt"))
    counts[root.name] = len(frames)

    # Object frames of 13 other drives (kitti_tiny_3d's scans, official labels/calibration): a held-out set of
    # many places, named by object frame.
    root = out / "kitti_objects_mixed"
    kept = usable_frames(drives, TINY3D_CANDIDATES)
    for k in kept:
        label = v3d.read(f"training/label_2/{k:06d}.txt").decode()
        _write(root, f"{k:06d}", tiny3d.read(f"velodyne/{k:06d}.bin"), label,
               v3d.read(f"data_object_calib/training/calib/{k:06d}.txt"))
    counts[root.name] = len(kept)
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
