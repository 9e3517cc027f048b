"""The README's first two commands are what a new user runs; CI runs the second one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)[:2]


def test_ci_runs_the_readme_test_command() -> None:
    setup_and_run, setup_and_test = readme_commands()
    ci_lines = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert setup_and_test in ci_lines
    assert ci_lines[-3:] == ['pytest -m "integration and not slow"', "ruff check .", "mypy"]  # after the default run, in its venv
    assert setup_and_test.endswith("&& pytest")


def test_both_commands_install_the_cpu_torch_pin_first() -> None:
    for command in readme_commands():
        assert command.index("pip install torch==2.13.0") < command.index('pip install -e ".[dev]"')


def test_main_command_runs_the_embedded_default() -> None:
    main = readme_commands()[0]
    assert "vespa-quant evaluate --dataset scifact --model all-MiniLM-L6-v2" in main
    assert "--backend" not in main  # the in-process engine is the default


def test_the_speed_table_is_the_benchmarks_own_output() -> None:
    """The README's engine table is copied from ``results/engine_vs_faiss/table.txt``, never typed."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```text\n(op +n_docs.+?)\n```", readme, flags=re.S)
    assert block, "the README has no engine_vs_faiss table"
    printed = set((ROOT / "results" / "engine_vs_faiss" / "table.txt").read_text().splitlines())
    assert [line for line in block.group(1).splitlines() if line not in printed] == []
