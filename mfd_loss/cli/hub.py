"""``mfd-loss download``, ``mfd-loss push`` and ``mfd-loss info``: feature maps and the Hugging Face Hub.

Errors are reported by :func:`mfd_loss.cli.main` (one line, exit code 2), like those of every command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parsers"]


def _hub_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--revision", default=None, help="Hub branch, tag or commit (overrides an @revision suffix)")
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache folder (default: $HF_HUB_CACHE, i.e. "
                                                     "$HF_HOME/hub)")
    p.add_argument("--token", default=None, help="Hub token for private repos (default: stored login / $HF_TOKEN)")
    p.add_argument("--local-files-only", action="store_true",
                   help="use the embedded copy or the cache only; never touch the network (as HF_HUB_OFFLINE=1)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``download``, ``push`` and ``info`` on the ``mfd-loss`` command's subparsers."""
    p = sub.add_parser(
        "download",
        help="fetch a named feature map or a Hub repo into the local cache and verify it",
        description="Resolve NAME (see mfd_loss.list_pretrained()) or REPO ('org/repo' or 'org/repo@revision') "
                    "to a local folder: the embedded copy or the Hugging Face cache when present, else a download "
                    "through huggingface_hub (HF_ENDPOINT, HF_HOME and tokens apply). The SHA-256 is checked. "
                    "Prints the folder; afterwards HF_HUB_OFFLINE=1 loads it with no network.",
    )
    p.add_argument("ref", metavar="NAME|REPO", help="registered name, 'org/repo' or 'org/repo@revision'")
    _hub_options(p)
    p.add_argument("--force", action="store_true", help="download again even when cached (repairs a corrupted copy)")
    p.set_defaults(func=_run_download)

    p = sub.add_parser(
        "push",
        help="publish an exported feature map folder to the Hugging Face Hub",
        description="Load DIR strictly (model.safetensors + config.json), then commit exactly config.json, "
                    "model.safetensors and README.md (DIR's own, or a model card generated from config.json) to "
                    "REPO_ID in one commit, creating the repo if needed. Prints the commit to pin as the revision "
                    "and the SHA-256 to register. Needs a write token (hf auth login or --token).",
    )
    p.add_argument("dir", help="exported folder (mfd-loss train / export / save_pretrained output)")
    p.add_argument("repo_id", help="target Hub repo, 'org/repo'")
    p.add_argument("--token", default=None, help="Hub write token (default: stored login / $HF_TOKEN)")
    p.add_argument("--branch", default=None, help="target branch (default: main)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.add_argument("--license", default=None, help="licence for a generated model card (default: config's, else mit)")
    p.set_defaults(func=_run_push)

    p = sub.add_parser(
        "info",
        help="describe a feature map: architecture, labels, recipe, metrics, hash",
        description="Resolve NAME, REPO or PATH as `download` does (a local path makes no request) and print its "
                    "architecture, label spec, data set, training recipe, metrics, source and SHA-256.",
    )
    p.add_argument("ref", metavar="NAME|REPO|PATH", help="registered name, 'org/repo[@revision]' or a local folder")
    _hub_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=_run_info)


def _resolve(args: argparse.Namespace, force: bool = False):
    from ..hub.pretrained import _load_resolved, resolve_pretrained

    found = resolve_pretrained(args.ref, revision=args.revision, cache_dir=args.cache_dir,
                               local_files_only=args.local_files_only, token=args.token, force_download=force)
    _, config = _load_resolved(found)  # verifies the hash / integrity before anything is reported
    return found, config


def _run_download(args: argparse.Namespace) -> int:
    from ..hub.serialization import WEIGHTS_NAME, sha256_file

    found, _ = _resolve(args, force=args.force)
    weights = found.path / WEIGHTS_NAME if found.path.is_dir() else found.path
    where = f"{found.repo_id}@{found.revision}" if found.repo_id else "local"
    print(f"{args.ref}: {found.source} ({where}), SHA-256 {sha256_file(weights)} verified", file=sys.stderr)
    print(found.path)
    return 0


def _run_push(args: argparse.Namespace) -> int:
    from ..hub.publish import push_folder
    from ..hub.serialization import WEIGHTS_NAME, sha256_file

    info = push_folder(args.dir, args.repo_id, token=args.token, private=True if args.private else None,
                       branch=args.branch, commit_message=args.message, create_pr=args.create_pr,
                       license=args.license)
    out = {"repo_id": args.repo_id, "revision": info.oid, "commit_url": info.commit_url,
           "pr_url": info.pr_url, "sha256": sha256_file(Path(args.dir) / WEIGHTS_NAME),
           "pretrained": f"{args.repo_id}@{info.oid}"}
    print(json.dumps(out))
    print(f"pin it: PretrainedSpec(repo_id={args.repo_id!r}, revision={info.oid!r}, sha256={out['sha256']!r}, ...)"
          f" or MFD(pretrained={out['pretrained']!r})", file=sys.stderr)
    return 0


def _summary(found: Any, config: dict[str, Any]) -> dict[str, Any]:
    from ..hub.serialization import WEIGHTS_NAME, sha256_file

    weights = found.path / WEIGHTS_NAME if found.path.is_dir() else found.path
    spec = config.get("label_spec", {})
    return {
        "source": found.source, "path": str(found.path), "name": found.name, "repo_id": found.repo_id,
        "revision": found.revision, "sha256": sha256_file(weights), "bytes": weights.stat().st_size,
        "schema_version": config.get("schema_version"), "storage_dtype": config.get("storage_dtype"),
        "architecture": config.get("architecture"), "input_range": config.get("input_range"),
        "label_spec": {"ops": spec.get("ops"), "labels": [e.get("name") for e in spec.get("labels", [])]},
        "dataset": config.get("dataset"), "recipe": config.get("recipe"), "metrics": config.get("metrics"),
        "license": config.get("license"),
    }


def _run_info(args: argparse.Namespace) -> int:
    from ..training.evaluation import format_r2

    found, config = _resolve(args)
    info = _summary(found, config)
    if args.json:
        print(json.dumps(info, default=str))
        return 0
    arch = info["architecture"] or {}
    lines = [f"{args.ref}", f"  source:       {info['source']}  {info['path']}"]
    if info["repo_id"]:
        named = f"  (name {info['name']})" if info["name"] else ""
        lines.append(f"  hub:          {info['repo_id']}@{info['revision']}{named}")
    lines += [
        f"  sha256:       {info['sha256']}  ({info['bytes']} bytes, {info['storage_dtype']}, "
        f"schema {info['schema_version']})",
        "  architecture: " + ", ".join(f"{k}={v}" for k, v in arch.items()),
        f"  labels ({len(info['label_spec']['labels'])}): " + ", ".join(info["label_spec"]["labels"]),
        f"  ops:          {', '.join(info['label_spec']['ops'] or [])}",
    ]
    if info["dataset"]:
        lines.append("  dataset:      " + json.dumps(info["dataset"], default=str))
    if info["recipe"]:
        lines.append("  recipe:       " + json.dumps(info["recipe"], default=str))
    held = (info["metrics"] or {}).get("held_out", info["metrics"] or {})
    if isinstance(held, dict) and held:
        if held.get("mse_mean") is not None:
            lines.append(f"  metrics:      held-out label MSE {float(held['mse_mean']):.4g}")
        if isinstance(held.get("r2"), dict):
            lines.append("  R^2:          " + format_r2(held["r2"], digits=3))
    elif info["metrics"]:
        lines.append("  metrics:      " + json.dumps(info["metrics"], default=str))
    print("\n".join(lines))
    return 0
