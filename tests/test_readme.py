"""The README's commands are the ones CI runs and the ones that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    test_commands = [c for c in _readme_commands() if "pytest" in c]
    assert len(test_commands) == 1, test_commands
    assert test_commands[0] in ci


def test_readme_main_command_uses_the_demo_entry_point():
    main = _readme_commands()[0]
    assert main.endswith("mfd-loss demo")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'mfd-loss = "mfd_loss.cli:main"' in pyproject
