"""MkDocs hook: publish the benchmark plots of ``benchmarks/results/`` with the site.

The benchmark scripts write their PNGs next to their JSON in ``benchmarks/results/`` (outside ``docs/``).
``docs/benchmarks.md`` includes ``benchmarks/README.md`` (``pymdownx.snippets``), whose images are linked as
``results/<name>.png``; this adds the PNGs to the site at that same path, so one README serves GitHub and
the site, and the site shows the very files the scripts produced.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent


def on_files(files, config):
    for png in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
        files.append(File(f"results/{png.name}", src_dir=str(ROOT / "benchmarks"), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files
