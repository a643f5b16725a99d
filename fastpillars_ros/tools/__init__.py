"""The command-line tools behind ``fastpillars-ros <command>``."""
