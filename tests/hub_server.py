"""A local stand-in for the Hugging Face Hub's file and commit API, for tests (no internet).

It serves exactly what ``huggingface_hub``'s client asks for when it downloads and pushes model repos:

- ``HEAD``/``GET /{org}/{name}/resolve/{revision}/{path}``: ``X-Repo-Commit``, ``ETag`` (git blob SHA-1), and
  for ``*.safetensors`` the LFS headers ``X-Linked-Etag`` (SHA-256) and ``X-Linked-Size``; ``Range`` requests
  get ``206``. Unknown repo / revision / file: ``404`` with ``X-Error-Code`` ``RepoNotFound`` /
  ``RevisionNotFound`` / ``EntryNotFound``, as the Hub does.
- ``GET /api/models/{org}/{name}[/revision/{revision}]``: model info (``sha``, ``siblings``);
  ``GET /api/agent-harnesses`` (the client's agent-detection registry): empty.
- ``POST /api/repos/create``, ``/api/validate-yaml``, ``/api/models/{repo}/preupload/{rev}`` and
  ``/api/models/{repo}/commit/{rev}`` (ndjson, base64 file contents; every file is declared "regular").
  Write calls need an ``Authorization`` header (401 otherwise).

Every request is recorded in ``requests`` (method, path, headers) so tests can assert "no request". Faults
for tests: ``fail_get[path] = status`` (answer GETs of a file with that status), ``drop_after[path] = n``
(send n body bytes of the next GET, then cut the connection), ``tamper[path] = fn`` (GET serves
``fn(bytes)`` while HEAD still describes the original file: a corrupted or truncated transfer).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import unquote, urlsplit

__all__ = ["FakeHub"]


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class _Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit sha -> files
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha
    private: bool = False


class FakeHub:
    """In-memory Hub on 127.0.0.1 with an ephemeral port; use as a context manager or start()/stop()."""

    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.fail_get: dict[str, int] = {}
        self.drop_after: dict[str, int] = {}
        self.tamper: dict[str, Callable[[bytes], bytes]] = {}
        self.validated_cards: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._counter = 0

    # -- repo content --------------------------------------------------------------------------------------
    def commit(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main", message: str = "") -> str:
        """Add a commit on branch (files are merged over the branch head); return its 40-hex sha."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, _Repo())
            parent = repo.refs.get(branch)
            content = dict(repo.commits.get(parent, {})) if parent else {}
            content.update(files)
            self._counter += 1
            digest = hashlib.sha1(f"{repo_id}\0{parent}\0{message}\0{self._counter}".encode())
            for name in sorted(content):
                digest.update(name.encode() + b"\0" + hashlib.sha256(content[name]).digest())
            sha = digest.hexdigest()
            repo.commits[sha] = content
            repo.refs[branch] = sha
            return sha

    def tag(self, repo_id: str, name: str, commit: str) -> None:
        self.repos[repo_id].refs[name] = commit

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.refs.get(revision, revision)]

    # -- request log ---------------------------------------------------------------------------------------
    def count(self, method: str | None = None, path_contains: str = "") -> int:
        with self._lock:
            return sum(1 for m, p, _ in self.requests if (method is None or m == method) and path_contains in p)

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- server --------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port: later requests fail to connect, as when a host goes away."""
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.0"  # one request per connection: a stopped server leaves no live connection

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- helpers -------------------------------------------------------------------------------------------
    def _record(self) -> str:
        path = urlsplit(self.path).path
        with self.fake._lock:
            self.fake.requests.append((self.command, path, {k.lower(): v for k, v in self.headers.items()}))
        return path

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, obj: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorized(self) -> bool:
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            return False
        return True

    def _repo_commit(self, repo_id: str, revision: str) -> tuple[_Repo, str] | None:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        commit = repo.refs.get(revision, revision if revision in repo.commits else None)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo, commit

    # -- routes --------------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def _route(self) -> None:
        path = self._record()
        try:
            if self.command in ("HEAD", "GET"):
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if m:
                    return self._resolve(m.group(1), unquote(m.group(2)), unquote(m.group(3)))
                if path == "/api/agent-harnesses":  # fetched by the client at most once a day
                    return self._json(200, {"standardEnvVars": [], "harnesses": {}})
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
                if m and self.command == "GET":
                    return self._model_info(m.group(1), unquote(m.group(2) or "main"))
            elif self.command == "POST":
                if path == "/api/repos/create":
                    return self._create_repo()
                if path == "/api/validate-yaml":
                    self.fake.validated_cards.append(json.loads(self._body() or b"{}").get("content", ""))
                    return self._json(200, {"errors": [], "warnings": []})
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/(.+)", path)
                if m:
                    handler = self._preupload if m.group(2) == "preupload" else self._commit
                    return handler(m.group(1), unquote(m.group(3)))
            self._error(404, "NotFound", f"no route for {self.command} {path}")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _resolve(self, repo_id: str, revision: str, filename: str) -> None:
        found = self._repo_commit(repo_id, revision)
        if found is None:
            return
        repo, commit = found
        files = repo.commits[commit]
        if filename not in files:
            return self._error(404, "EntryNotFound", f"{filename} does not exist on {revision}",
                               {"X-Repo-Commit": commit})
        data = files[filename]
        headers = {"X-Repo-Commit": commit, "ETag": f'"{git_blob_sha1(data)}"', "Accept-Ranges": "bytes"}
        if filename.endswith(".safetensors"):  # stored in LFS on the Hub: the linked etag is the SHA-256
            headers.update({"X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Linked-Size": str(len(data))})
        if self.command == "HEAD":
            return self._send(200, b"", {**headers, "Content-Length": str(len(data))}, "application/octet-stream")
        status = self.fake.fail_get.get(filename)
        if status is not None:
            return self._error(status, "ServerError", "injected failure")
        body = self.fake.tamper.get(filename, lambda b: b)(data)
        start = 0
        rng = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if rng:
            start = int(rng.group(1))
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        chunk = body[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Type", "application/octet-stream")
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        cut = self.fake.drop_after.pop(filename, None)
        if cut is not None:
            self.wfile.write(chunk[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # connection lost mid-transfer
            return
        self.wfile.write(chunk)

    def _model_info(self, repo_id: str, revision: str) -> None:
        found = self._repo_commit(repo_id, revision)
        if found is None:
            return
        repo, commit = found
        self._json(200, {"id": repo_id, "modelId": repo_id, "sha": commit, "private": repo.private,
                         "siblings": [{"rfilename": f} for f in sorted(repo.commits[commit])]})

    def _create_repo(self) -> None:
        body = json.loads(self._body() or b"{}")
        if not self._authorized():
            return
        repo_id = f"{body.get('organization')}/{body['name']}"
        if repo_id in self.fake.repos:
            return self._error(409, "RepoExists", "You already created this model repo")
        self.fake.repos[repo_id] = _Repo(private=body.get("visibility") == "private")
        self._json(200, {"url": f"{self.fake.url}/{repo_id}", "name": repo_id})

    def _preupload(self, repo_id: str, revision: str) -> None:
        body = json.loads(self._body() or b"{}")
        if not self._authorized():
            return
        if repo_id not in self.fake.repos:
            return self._error(404, "RepoNotFound", "Repository not found")
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                 for f in body.get("files", [])]
        self._json(200, {"files": files, "commitOid": self.fake.repos[repo_id].refs.get(revision)})

    def _commit(self, repo_id: str, revision: str) -> None:
        raw = self._body()
        if not self._authorized():
            return
        if repo_id not in self.fake.repos:
            return self._error(404, "RepoNotFound", "Repository not found")
        files, summary = {}, ""
        for line in raw.decode().splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                summary = item["value"].get("summary", "")
            elif item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            else:
                return self._error(400, "BadRequest", f"unsupported commit operation {item['key']}")
        sha = self.fake.commit(repo_id, files, branch=revision, message=summary)
        self._json(200, {"commitUrl": f"{self.fake.url}/{repo_id}/commit/{sha}", "commitOid": sha,
                         "pullRequestUrl": None, "success": True})
