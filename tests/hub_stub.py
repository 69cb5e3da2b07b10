"""A stand-in for the Hugging Face Hub's HTTP API, on a free loopback port: just what
``huggingface_hub`` calls to create a repo and a branch and to upload a folder (README metadata check,
preupload, commit), and a record of every request and every file committed.

Why a stub and not a mock of ``HfApi``: the push is tested through the real client, so a change in
what ``huggingface_hub`` sends (a new endpoint, another payload) fails here instead of on the first
real push. Every file is answered as a "regular" (inline, base64) upload, which keeps the stub free of
the LFS and Xet storage protocols. No test ever reaches a real hub.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

_REPO_API = re.compile(r"^/api/models/([^/]+)/([^/]+)/(preupload|commit|branch|revision)/(.+)$")


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None


@dataclass
class Commit:
    repo_id: str
    revision: str
    summary: str
    files: dict[str, bytes]
    oid: str


@dataclass
class HubStub:
    """The stub's state; ``fail`` maps an endpoint kind ('create', 'branch', 'preupload', 'commit',
    'validate') to the HTTP status it answers instead (e.g. ``{"create": 500}``)."""

    requests: list[Request] = field(default_factory=list)
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)
    branches: set[tuple[str, str]] = field(default_factory=set)
    commits: list[Commit] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def start(self) -> HubStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet: the test reads stub.requests
                pass

            def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
                stub._handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                stub._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # ---------------------------------------------------------------- the API

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        path = urlsplit(h.path).path
        self.requests.append(Request(method, path, h.headers.get("authorization")))
        body = _read_body(h)
        if path == "/api/validate-yaml":
            return self._answer(h, "validate", 200, {"errors": [], "warnings": []})
        if path == "/api/repos/create" and method == "POST":
            payload = json.loads(body or b"{}")
            repo_id = f"{payload.get('organization')}/{payload['name']}"
            if repo_id in self.repos:
                exists = {"error": "You already created this model repo", "url": self._repo_url(repo_id)}
                return self._answer(h, "create", 409, exists)
            status = self.fail.get("create")
            if status is None:
                self.repos[repo_id] = {"visibility": payload.get("visibility"), "type": payload.get("type")}
            return self._answer(h, "create", 200, {"url": self._repo_url(repo_id)})
        match = _REPO_API.match(path)
        if match is None:
            return self._answer(h, "", 404, {"error": f"the stub has no {method} {path}"})
        repo_id = f"{match[1]}/{match[2]}"
        kind, revision = match[3], unquote(match[4])
        if repo_id not in self.repos:
            return self._answer(h, kind, 404, {"error": "Repository not found"})
        if kind == "branch":
            if (repo_id, revision) in self.branches:
                return self._answer(h, kind, 409, {"error": "branch exists"})
            if "branch" not in self.fail:
                self.branches.add((repo_id, revision))
            return self._answer(h, kind, 200, {})
        if kind == "preupload":
            files = json.loads(body)["files"]
            answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return self._answer(h, kind, 200, {"files": answer})
        if kind == "commit":
            if "commit" in self.fail:
                return self._answer(h, kind, self.fail["commit"], {"error": "stub failure"})
            return self._commit(h, repo_id, revision, body)
        last = next((c.oid for c in reversed(self.commits) if c.repo_id == repo_id), "0" * 40)
        return self._answer(h, kind, 200, {"id": repo_id, "sha": last, "siblings": []})

    def _commit(self, h: BaseHTTPRequestHandler, repo_id: str, revision: str, body: bytes) -> None:
        if revision != "main" and (repo_id, revision) not in self.branches:
            return self._answer(h, "commit", 404, {"error": f"Invalid rev id: {revision}"})
        summary, files = "", {}
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                summary = item["value"]["summary"]
            elif item["key"] == "file":
                value = item["value"]
                files[value["path"]] = base64.b64decode(value["content"])
            else:  # lfsFile and deletions: this stub answers every file as regular, so none should come
                return self._answer(h, "commit", 400, {"error": f"the stub takes no {item['key']}"})
        oid = hashlib.sha1(body).hexdigest()
        self.commits.append(Commit(repo_id, revision, summary, files, oid))
        return self._answer(
            h, "commit", 200, {"commitUrl": f"{self._repo_url(repo_id)}/commit/{oid}", "commitOid": oid}
        )

    def _answer(self, h: BaseHTTPRequestHandler, kind: str, status: int, payload: dict[str, Any]) -> None:
        if kind in self.fail and status < 400:
            status, payload = self.fail[kind], {"error": "stub failure"}
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _repo_url(self, repo_id: str) -> str:
        return f"{self.url}/{repo_id}"


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(h.rfile.readline().strip() or b"0", 16)
            if size == 0:
                h.rfile.readline()
                return b"".join(chunks)
            chunks.append(h.rfile.read(size))
            h.rfile.readline()
    length = int(h.headers.get("Content-Length") or 0)
    return h.rfile.read(length) if length else b""
