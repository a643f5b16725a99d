"""Give a new venv the distribution-independent packages another venv already installed, as hard links.

    link_packages.py SOURCE_VENV -r requirements/runtime.txt -r requirements/dev.txt

Run with the target venv's interpreter (scripts/setup_env.sh does, for .venv-jazzy from .venv). The packages
named in the requirement files, except the ROS wheels (``ros-*``: built per distribution), and everything they
depend on are linked file by file from their RECORD into this interpreter's prefix, so that the pip install
that follows finds them installed: no download, no unpacking of torch's ~1 GB again. Scripts in ``bin/`` that
name the source venv's interpreter are copied with this venv's instead. A package this venv already has is
left alone; pip replaces a linked one whose version the new requirements do not accept (it unlinks, so the
source venv keeps its files). Nothing is linked across Python versions.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(files: list[Path]) -> list[str]:
    """Project names in pip requirement files, without the ROS wheels (``ros-*``)."""
    names = []
    for path in files:
        for line in path.read_text().splitlines():
            match = _NAME.match(line.split("#", 1)[0])
            if match and not _canonical(match.group(1)).startswith("ros-"):
                names.append(match.group(1))
    return names


def closure(roots: list[str], installed: dict[str, metadata.Distribution]) -> list[metadata.Distribution]:
    """The installed distributions of ``roots`` and of everything they require (extras' requirements aside)."""
    todo, seen = [_canonical(n) for n in roots], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in installed:
            continue
        seen.add(name)
        for req in installed[name].requires or []:
            if "extra" not in req.partition(";")[2]:
                todo.append(_canonical(_NAME.match(req).group(1)))
    return [installed[n] for n in sorted(seen)]


def link_distribution(dist: metadata.Distribution, src_site: Path, dst_site: Path, src_venv: Path,
                      dst_venv: Path) -> int:
    """Hard-link (copy where linking fails) the files of ``dist``'s RECORD; return how many were placed."""
    count = 0
    for entry in dist.files or []:
        src = (src_site / entry).resolve()
        dst = Path(os.path.normpath(dst_site / entry))
        if not src.is_file() or dst_venv not in dst.parents:
            continue  # a RECORD line for a file never written (e.g. an uncompiled .pyc) or outside the venv
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():
            dst.unlink()
        head = src.read_bytes()[:256] if dst.parent.name == "bin" else b""
        if head.startswith(b"#!") and str(src_venv).encode() in head:
            dst.write_bytes(src.read_bytes().replace(str(src_venv).encode(), str(dst_venv).encode()))
            shutil.copymode(src, dst)
        else:
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="The venv to take the packages from.")
    parser.add_argument("-r", dest="requirements", type=Path, action="append", required=True,
                        help="A requirement file naming the packages to take (repeatable).")
    args = parser.parse_args(argv)
    src_venv, dst_venv = args.source.resolve(), Path(sys.prefix).resolve()
    dst_site = Path(sysconfig.get_paths()["purelib"]).resolve()
    src_site = src_venv / dst_site.relative_to(dst_venv)
    if src_venv == dst_venv or not src_site.is_dir():
        print(f"[link_packages] nothing to share: no {src_site}")
        return 0
    have = {_canonical(d.metadata["Name"]) for d in metadata.distributions(path=[str(dst_site)])}
    installed = {_canonical(d.metadata["Name"]): d for d in metadata.distributions(path=[str(src_site)])}
    todo = [d for d in closure(requirement_names(args.requirements), installed)
            if _canonical(d.metadata["Name"]) not in have]
    files = sum(link_distribution(d, src_site, dst_site, src_venv, dst_venv) for d in todo)
    print(f"[link_packages] {len(todo)} packages ({files} files) linked from {src_venv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
