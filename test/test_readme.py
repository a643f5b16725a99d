"""The README stays true: its parameter table and command list match the code."""

from __future__ import annotations

from pathlib import Path

from fastpillars_ros.cli import COMMANDS
from fastpillars_ros.ros.node_params import parameters_markdown

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_parameter_table_equals_the_parameter_schema():
    begin, end = "<!-- parameters:begin -->\n", "\n<!-- parameters:end -->"
    table = README[README.index(begin) + len(begin):README.index(end)]
    assert table == parameters_markdown(), "regenerate with fastpillars_ros.ros.node_params.parameters_markdown()"


def test_readme_names_every_command():
    missing = [name for name in COMMANDS if f"`{name}" not in README]
    assert not missing, f"README's Tools table lacks {missing}"


def test_readme_documents_the_make_targets():
    for target in ("make demo", "make test", "make bench"):
        assert target in README
