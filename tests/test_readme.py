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


CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


def test_cpu_only_torch_install_is_documented_and_used_by_ci():
    """README and the docs' install section give the CPU-only torch command; CI runs it before the test command."""
    readme_cpu = [c for c in _readme_commands() if CPU_INDEX in c]
    assert len(readme_cpu) == 1, readme_cpu
    assert CPU_INDEX in (ROOT / "docs" / "index.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(c for c in _readme_commands() if "pytest" in c)
    # CI runs the same install, pinned to the tested torch/torchvision, before the test command
    assert CPU_INDEX in ci and ci.index(CPU_INDEX) < ci.index(test_command)


def test_every_manifest_pattern_matches_a_file():
    """``python -m build`` warns for a MANIFEST.in pattern that matches nothing (it did for examples/*.md)."""
    for line in (ROOT / "MANIFEST.in").read_text().splitlines():
        words = line.split()
        if not words or words[0] != "recursive-include":
            continue
        folder, patterns = ROOT / words[1], words[2:]
        for pattern in patterns:
            assert any(folder.rglob(pattern)), f"MANIFEST.in: no file matches {words[1]}/**/{pattern}"


def test_readme_embeds_a_committed_plot_and_a_sample_grid():
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", (ROOT / "README.md").read_text())
    assert all((ROOT / path).is_file() for path in images), images
    assert any(p.startswith("benchmarks/results/") and "samples" not in p for p in images), images
    assert any("samples" in p for p in images), images
