"""Copy the Markdown tables the benchmark scripts wrote (``results/*.md``) into ``benchmarks/README.md``.

The README marks each table's place with a pair of HTML comments, invisible on the rendered page::

    <!-- results: cost-cpu.md -->
    ...replaced by the content of results/cost-cpu.md...
    <!-- /results -->

Run after a benchmark:  python benchmarks/update_readme.py
``tests/test_benchmarks.py`` fails when the README and the result files disagree, so a table in the README is
always the one a script measured.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BLOCK = re.compile(r"(<!-- results: (?P<name>[\w.-]+\.md) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def render(readme: str, results: Path = HERE / "results") -> str:
    """The README text with every marked block replaced by its result file (an error if one is missing)."""
    def fill(match: re.Match) -> str:
        path = results / match["name"]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run the benchmark that writes it first")
        return match.group(1) + "\n" + path.read_text().strip() + "\n\n" + match.group(4)

    return BLOCK.sub(fill, readme)


def main() -> int:
    path = HERE / "README.md"
    old = path.read_text()
    new = render(old)
    path.write_text(new)
    print(f"{path}: {'updated' if new != old else 'already up to date'} "
          f"({len(BLOCK.findall(new))} result tables)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
