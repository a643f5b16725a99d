"""The package's layering, checked on the source (AST, in the spirit of import-linter): what may import what.

* The library is ROS-free: only ``ros/`` (the node and its helpers) and ``tools/`` (the commands), plus the
  two commands kept beside their library package, may import rclpy, a ROS client library or a ``*_msgs`` package.
* ``runtime/``, ``model/`` and ``ops/`` sit under the detector: they never import it.
* No import cycle between project modules.

Every import counts, also the ones inside functions (a lazy import that dodges a cycle is still a cycle)
and under ``if TYPE_CHECKING``. ``from package import submodule`` is an import of the submodule.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = "fastpillars_ros"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# --- the layers: the package tree is the architecture ---
#: The ROS node and its helpers (``ros/``) and the command-line tools (``tools/``), plus the commands that live
#: with their library package. Only these may import ROS.
ROS_PACKAGES = ("ros", "tools")
COMMANDS_ELSEWHERE = {f"{PACKAGE}.sim.cli", f"{PACKAGE}.train.command"}


def _ros_facing(module: str) -> bool:
    parts = module.split(".")
    return (len(parts) > 2 and parts[1] in ROS_PACKAGES) or module in COMMANDS_ELSEWHERE


#: Cycles known to exist, with the issue that removes them. Any other cycle fails.
KNOWN_CYCLES: set[frozenset[str]] = set()
#: Entry points on top of everything: the ``fastpillars-ros`` dispatcher and the ``python -m fastpillars_ros.node``
#: shim. Every other module outside ros/ and tools/ is library and must not reach up into them.
ENTRY_POINTS = {f"{PACKAGE}.cli", f"{PACKAGE}.node"}
#: Packages under the detector: they must not import it.
BELOW_DETECTOR = ("runtime", "model", "ops")
ROS_LIBRARIES = ("rclpy", "launch", "launch_ros", "tf2_ros")


def _is_ros(module: str) -> bool:
    top = module.split(".")[0]
    return top in ROS_LIBRARIES or top.endswith("_msgs")


@cache
def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


@cache
def imports(module: str) -> frozenset[str]:
    """Every module ``module`` imports (absolute dotted names; third-party ones included)."""
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules()]
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(target)
    return frozenset(found)


def project_graph() -> dict[str, set[str]]:
    return {m: {t for t in imports(m) if t in modules() and t != m} for m in modules()}


def import_cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_layer_tables_name_existing_modules():
    assert all(f"{PACKAGE}.{p}" in modules() for p in ROS_PACKAGES)
    assert COMMANDS_ELSEWHERE <= set(modules()), sorted(COMMANDS_ELSEWHERE - set(modules()))
    assert all(c <= set(modules()) for c in KNOWN_CYCLES)
    assert ENTRY_POINTS <= set(modules())


def test_only_ros_facing_modules_import_ros():
    offenders = {m: sorted(t for t in imports(m) if _is_ros(t)) for m in modules() if not _ros_facing(m)}
    assert {m: ts for m, ts in offenders.items() if ts} == {}


def test_the_library_does_not_import_the_node_or_the_tools():
    library = [m for m in modules() if not _ros_facing(m) and m not in ENTRY_POINTS and m != PACKAGE]
    upward = {m: sorted(t for t in imports(m) if t in modules() and _ros_facing(t)) for m in library}
    assert {m: ts for m, ts in upward.items() if ts} == {}


@pytest.mark.parametrize("package", BELOW_DETECTOR)
def test_runtime_model_and_ops_do_not_import_the_detector(package):
    below = [m for m in modules() if m.startswith(f"{PACKAGE}.{package}")]
    assert below
    assert {m: "detector" for m in below if f"{PACKAGE}.detector" in imports(m)} == {}


def test_no_import_cycles_between_project_modules():
    cycles = [c for c in import_cycles(project_graph()) if frozenset(c) not in KNOWN_CYCLES]
    assert cycles == []


def test_the_checks_can_fail():
    # The cycle finder and the ROS detector on a made-up graph and names, so an empty answer above means
    # "none found", not "never looked".
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert _ros_facing(f"{PACKAGE}.ros.node") and _ros_facing(f"{PACKAGE}.tools.replay")
    assert not _ros_facing(f"{PACKAGE}.detector") and not _ros_facing(f"{PACKAGE}.node")
    assert _is_ros("rclpy.node") and _is_ros("sensor_msgs.msg") and not _is_ros("numpy")
    assert f"{PACKAGE}.ops.grid" in imports(f"{PACKAGE}.ops.pillarize")
