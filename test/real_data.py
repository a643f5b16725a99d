"""Where the real LiDAR scans used by the tests live (shared/data/real beside the repository).

The repository is ``<root>/main`` (or a CI clone) and the data ``<root>/shared/data/real``; CI clones keep
the same relation. A missing folder is a broken checkout, not a reason to skip: :func:`real_data_dir`
fails with a message that says where it looked.
"""

from __future__ import annotations

from pathlib import Path

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def real_data_dir() -> Path:
    """The real-data folder; raises ``FileNotFoundError`` naming the expected path when it is absent."""
    if not (REAL_DATA / "README.md").is_file():
        raise FileNotFoundError(
            f"real LiDAR test data not found at {REAL_DATA}: the tests expect shared/data/real beside the "
            f"repository folder (as in the development checkout and CI)")
    return REAL_DATA


def real_file(relative: str) -> Path:
    """One file under the real-data folder; raises ``FileNotFoundError`` when it is missing."""
    path = real_data_dir() / relative
    if not path.is_file():
        raise FileNotFoundError(f"real LiDAR test file missing: {path}")
    return path
