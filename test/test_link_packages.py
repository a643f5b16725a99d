"""scripts/link_packages.py: the second venv (.venv-jazzy) takes the distribution-independent packages of .venv as
hard links, and never a ROS wheel."""

from __future__ import annotations

import importlib.util
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("link_packages", ROOT / "scripts" / "link_packages.py")
link_packages = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(link_packages)

SITE = Path(sysconfig.get_paths()["purelib"]).resolve()


def _installed() -> dict[str, metadata.Distribution]:
    return {link_packages._canonical(d.metadata["Name"]): d for d in metadata.distributions(path=[str(SITE)])}


def test_requirement_names_leave_out_the_ros_wheels():
    names = link_packages.requirement_names([ROOT / "requirements" / "runtime.txt"])
    assert "torch" in names and "rosbags" in names
    assert not [n for n in names if n.lower().startswith("ros-")]


def test_closure_takes_what_the_named_packages_require_and_nothing_of_ros():
    names = {link_packages._canonical(d.metadata["Name"]) for d in link_packages.closure(["pytest"], _installed())}
    assert {"pytest", "pluggy", "iniconfig"} <= names
    assert "rclpy" not in names and "numpy" not in names


def test_a_package_is_linked_file_by_file_and_its_scripts_name_the_new_interpreter(tmp_path):
    venv = Path(sys.prefix).resolve()
    dst_site = tmp_path / SITE.relative_to(venv)
    (pytest_dist,) = [d for d in link_packages.closure(["pytest"], _installed()) if d.metadata["Name"] == "pytest"]
    assert link_packages.link_distribution(pytest_dist, SITE, dst_site, venv, tmp_path) > 0
    source = SITE / "pytest" / "__init__.py"
    assert (dst_site / "pytest" / "__init__.py").stat().st_ino == source.stat().st_ino
    assert [d.version for d in metadata.distributions(name="pytest", path=[str(dst_site)])] == [pytest_dist.version]
    script = (tmp_path / "bin" / "pytest").read_text()
    assert script.startswith(f"#!{tmp_path}/bin/python") and str(venv) not in script
