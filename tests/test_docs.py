"""The documentation site builds with ``mkdocs build --strict`` and every Python snippet in it runs.

Each page's ```python blocks (docs/*.md and README.md) are executed in order, in one namespace per page, in a
fresh temporary working directory, exactly as a reader would paste them. Two HTML-comment markers, invisible on
the rendered page, are understood:

* ``<!-- docs-test: skip REASON -->`` right before a block: the block is not run (a reason is required, and
  every skipped block is reported as a warning in the test summary);
* a comment that starts with ``<!-- docs-test: setup`` and ends with ``-->`` on a later line holds hidden
  Python that runs at that point of the page (e.g. to define the ``prediction`` a snippet takes for granted).

Snippets that load the packaged ``"cifar10"`` map need its embedded weights. While ``list_pretrained()`` lacks
``"cifar10"``, a page whose block fails for that reason (the registry's KeyError, or a NameError in a later
block that used what the failed block defined) is an expected failure (xfail, not strict); once the weights
are registered, every block must run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
EXECUTED_LANGUAGES = {"python", "py"}
SLOW_BLOCK_SECONDS = 20.0  # generous: the first optimiser of a process imports torch._dynamo (seconds)

_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
_SKIP = re.compile(r"^\s*<!--\s*docs-test:\s*skip\b(?P<reason>.*?)-->\s*$")
_SETUP = re.compile(r"^\s*<!--\s*docs-test:\s*setup\s*$")


@dataclass
class Snippet:
    page: str
    line: int  # 1-based line of the first code line
    code: str
    skip_reason: str | None = None
    hidden: bool = False


def extract_snippets(path: Path) -> list[Snippet]:
    """Python blocks of a Markdown file in page order (fenced blocks of other languages are skipped over)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    snippets: list[Snippet] = []
    pending_skip: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if _SETUP.match(line):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "-->"), None)
            if end is None:
                raise ValueError(f"{path.name}:{i + 1}: unterminated '<!-- docs-test: setup' comment")
            snippets.append(Snippet(path.name, i + 2, textwrap.dedent("\n".join(lines[i + 1:end])), hidden=True))
            i = end + 1
            continue
        skip = _SKIP.match(line)
        if skip:
            reason = skip.group("reason").strip()
            if not reason:
                raise ValueError(f"{path.name}:{i + 1}: 'docs-test: skip' needs a reason")
            pending_skip = reason
            i += 1
            continue
        opening = _OPEN.match(line)
        if opening:
            indent, fence = opening.group("indent"), opening.group("fence")
            language = (opening.group("info").split() or [""])[0].lstrip(".{").rstrip("}").lower()
            closing = re.compile(rf"^{re.escape(indent)}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
            end = next((j for j in range(i + 1, len(lines)) if closing.match(lines[j])), None)
            if end is None:
                raise ValueError(f"{path.name}:{i + 1}: unterminated code fence")
            if language in EXECUTED_LANGUAGES:
                body = [ln[len(indent):] if ln.startswith(indent) else ln.lstrip() for ln in lines[i + 1:end]]
                snippets.append(Snippet(path.name, i + 2, textwrap.dedent("\n".join(body)), pending_skip))
            pending_skip = None
            i = end + 1
            continue
        if line.strip():
            pending_skip = None  # a skip marker applies to the block right after it only
        i += 1
    return snippets


def _missing_cifar10() -> bool:
    import mfd_loss

    return "cifar10" not in mfd_loss.list_pretrained()


def _is_missing_weights_error(err: BaseException) -> bool:
    return isinstance(err, KeyError) and "no pretrained feature map named 'cifar10'" in str(err)


def test_extract_snippets_understands_fences_and_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(textwrap.dedent("""\
        Text.

        ```python
        a = 1
        ```

        ```bash
        echo "```python"
        ```

        <!-- docs-test: skip needs a GPU -->
        ```python title="gpu.py"
        b = 2
        ```

        <!-- docs-test: setup
        c = 3
        -->

        !!! note
            ```py
            d = a + c
            ```
        """))
    snippets = extract_snippets(page)
    assert [s.code for s in snippets] == ["a = 1", "b = 2", "c = 3", "d = a + c"]
    assert [s.skip_reason for s in snippets] == [None, "needs a GPU", None, None]
    assert [s.hidden for s in snippets] == [False, False, True, False]
    assert snippets[0].line == 4


def _pages_with_snippets() -> list[Path]:
    pages = []
    for page in PAGES:
        try:
            if extract_snippets(page):
                pages.append(page)
        except ValueError:
            pages.append(page)  # a malformed page fails in its own test below
    return pages


@pytest.mark.parametrize("page", _pages_with_snippets(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_snippets_run(page, tmp_path, monkeypatch):
    snippets = extract_snippets(page)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # snippets are hermetic: the docs promise offline use
    namespace: dict = {"__name__": "__main__"}
    missing_weights: list[str] = []
    failures: list[str] = []
    for snippet in snippets:
        where = f"{snippet.page}:{snippet.line}"
        if snippet.skip_reason:
            warnings.warn(f"{where}: snippet not executed ({snippet.skip_reason})", stacklevel=1)
            continue
        # Leading newlines make tracebacks point at the page's own line numbers.
        code = compile("\n" * (snippet.line - 1) + snippet.code + "\n", str(page), "exec")
        started = time.perf_counter()
        try:
            exec(code, namespace)
        except Exception as err:  # noqa: BLE001 - every failure is reported with its location
            if _missing_cifar10() and (_is_missing_weights_error(err) or (missing_weights and isinstance(err, NameError))):
                missing_weights.append(f"{where}: {type(err).__name__}: {err}")
                continue
            failures.append(f"{where}:\n{''.join(traceback.format_exception(err))}")
            break  # later blocks of the page build on this one
        elapsed = time.perf_counter() - started
        if elapsed > SLOW_BLOCK_SECONDS:
            warnings.warn(f"{where}: snippet took {elapsed:.1f} s; docs snippets should take a few seconds",
                          stacklevel=1)
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)
    if missing_weights:
        pytest.xfail("the packaged 'cifar10' feature map is not registered yet (mfd_loss.list_pretrained() lacks "
                     "'cifar10'); these snippets need its embedded weights: " + "; ".join(missing_weights))


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_entry_pages_hide_no_setup(page):
    """The README and the quickstart are copied as they are: no block may rely on hidden setup code."""
    hidden = [s.line for s in extract_snippets(ROOT / page) if s.hidden]
    assert not hidden, f"{page} hides setup code at line(s) {hidden}; put it in the block a reader sees"


def test_quickstart_training_snippet_warns_nothing_and_defines_every_r2(tmp_path, monkeypatch):
    """The quickstart's training block runs without a UserWarning and reports a defined R^2 for every label."""
    snippets = extract_snippets(ROOT / "docs" / "index.md")
    block = next(s for s in snippets if "train_feature_map(" in s.code)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        exec(compile(block.code, "index.md", "exec"), namespace)
    metrics = namespace["summary"]["metrics"]
    assert metrics["undefined"] == {}
    assert all(value == value for value in metrics["r2"].values())  # no NaN


def test_api_page_documents_every_public_name():
    import mfd_loss

    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    # `::: mfd_loss.NAME` or `::: mfd_loss.module.NAME`: the last component is the documented name.
    documented = set(re.findall(r"^::: mfd_loss(?:\.\w+)*\.(\w+)\s*$", api, flags=re.M))
    aliases = {"MFD"}  # documented under ManifoldFeatureDistance
    missing = sorted(set(mfd_loss.__all__) - documented - aliases)
    assert not missing, f"docs/api.md lacks '::: mfd_loss.NAME' entries for {missing}"


def test_citation_page_matches_readme():
    def bibtex(path: Path) -> list[str]:
        return re.findall(r"```bibtex\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)

    readme, page = bibtex(ROOT / "README.md"), bibtex(ROOT / "docs" / "citation.md")
    assert page and readme and readme[0] in page, "docs/citation.md must carry the README's BibTeX entry"


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason=f"{module} is not installed (pip install '.[test]' installs the docs tools)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    log = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{log}"
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "index.html").is_file()
