"""A small Hugging Face Hub-compatible HTTP server for the tests, on 127.0.0.1 only.

It answers the two requests ``hf_hub_download`` makes, a HEAD then a GET on
``/{repo_id}/resolve/{revision}/{filename}``, with the headers huggingface_hub reads (read in
huggingface_hub/file_download.py, ``get_hf_file_metadata``/``_get_metadata_or_catch_error``):

- ``X-Repo-Commit`` (the commit the revision resolves to; required, else FileMetadataError),
- ``X-Linked-Etag`` / ``ETag`` (the blob name in the cache; required),
- ``X-Linked-Size`` / ``Content-Length`` (the expected size),
- ``X-Error-Code`` = ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound`` on errors
  (mapped by ``hf_raise_for_status`` to RepositoryNotFoundError, RevisionNotFoundError,
  RemoteEntryNotFoundError).

Like the real Hub, an LFS file (here: every ``.safetensors``) answers with a 302 to a separate "CDN"
origin (a second port), carrying the metadata on the redirect itself; small files answer 200 directly.
The same server plays GitHub for the upstream fallback: ``/{owner}/{repo}/raw/{commit}/{path}`` redirects
to a raw-content path on the CDN origin, as github.com does to raw.githubusercontent.com.

Every request is logged (``server.requests``) so tests can count downloads and inspect headers.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

GITHUB = "https://github.com"


@dataclass
class Request:
    origin: str  # "hub" or "cdn"
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class _Repo:
    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file (what the Hub sends as ETag for non-LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    """Start with ``with HubServer() as server:`` or ``start()``/``stop()``; ``server.url`` is HF_ENDPOINT."""

    def __init__(self) -> None:
        self._repos: dict[str, _Repo] = {}
        self._upstream: dict[str, bytes] = {}
        self._padding: dict[str, int] = {}
        self.sent: dict[str, int] = {}  # path -> body bytes the server managed to send
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.requests: list[Request] = []
        self._servers: list[ThreadingHTTPServer] = []
        self.url = ""
        self.cdn_url = ""

    # ------------------------------------------------------------------ content
    def add_commit(
        self, repo_id: str, files: dict[str, bytes], *, delete: tuple[str, ...] = (), branch: str = "main"
    ) -> str:
        """Commit ``files`` (and deletions) on top of the branch; return the 40-hex commit id."""
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo())
            parent = repo.refs.get(branch)
            tree = dict(repo.commits[parent]) if parent else {}
            tree.update(files)
            for name in delete:
                tree.pop(name, None)
            h = hashlib.sha1(f"{repo_id}:{parent}".encode())
            for name in sorted(tree):
                h.update(name.encode() + b"\0" + hashlib.sha256(tree[name]).digest())
            commit = h.hexdigest()
            repo.commits[commit] = tree
            repo.refs[branch] = commit
            for data in tree.values():
                self._blobs[hashlib.sha256(data).hexdigest()] = data
            return commit

    def add_upstream(self, url: str, data: bytes, *, padding: int = 0) -> None:
        """Serve ``data`` for a https://github.com/... URL (the manifest's upstream ``url``).

        ``padding`` zero bytes follow ``data`` (streamed, never held in memory): a server that sends more
        than the file it should.
        """
        assert url.startswith(GITHUB + "/"), url
        with self._lock:
            self._upstream[url[len(GITHUB) :]] = data
            self._padding[url[len(GITHUB) :]] = padding

    def remove_repo(self, repo_id: str) -> None:
        with self._lock:
            self._repos.pop(repo_id, None)

    def count(self, method: str | None = None, origin: str | None = None, contains: str = "") -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (method is None or r.method == method)
                and (origin is None or r.origin == origin)
                and contains in r.path
            )

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> HubServer:
        hub = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "hub"))
        cdn = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "cdn"))
        for srv in (hub, cdn):
            srv.daemon_threads = True
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._servers = [hub, cdn]
        self.url = f"http://127.0.0.1:{hub.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{cdn.server_address[1]}"
        return self

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        self._servers = []

    def __enter__(self) -> HubServer:  # noqa: PYI034 - start() returns self; the class is not subclassed
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ routing
    def _resolve(self, path: str) -> tuple[int, dict[str, str], bytes]:
        # /{namespace}/{name}/resolve/{revision}/{filename...}
        parts = path.lstrip("/").split("/")
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            with self._lock:
                repo = self._repos.get(repo_id)
                if repo is None:
                    # The Hub answers 401 (not 404) for a repo it will not reveal; the code tells them apart.
                    return (
                        401,
                        {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
                        b"",
                    )
                commit = repo.refs.get(revision) or (revision if revision in repo.commits else None)
                if commit is None:
                    return 404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"}, b""
                data = repo.commits[commit].get(filename)
            if data is None:
                return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, b""
            sha = hashlib.sha256(data).hexdigest()
            headers = {"X-Repo-Commit": commit}
            if filename.endswith(".safetensors"):  # an LFS file: metadata on a redirect to the CDN
                headers.update(
                    {
                        "Location": f"{self.cdn_url}/blobs/{sha}",
                        "X-Linked-Etag": f'"{sha}"',
                        "X-Linked-Size": str(len(data)),
                        "ETag": f'"{git_blob_sha1(data)}"',
                    }
                )
                return 302, headers, b""
            headers["ETag"] = f'"{git_blob_sha1(data)}"'
            return 200, headers, data
        if len(parts) >= 5 and parts[2] == "raw":  # github.com/{owner}/{repo}/raw/{commit}/{path}
            with self._lock:
                known = path in self._upstream
            if known:
                return 302, {"Location": f"{self.cdn_url}/raw{path}"}, b""
            return 404, {}, b"Not Found"
        return 404, {}, b"Not Found"

    def _cdn(self, path: str) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            if path.startswith("/blobs/"):
                data = self._blobs.get(path[len("/blobs/") :])
            elif path.startswith("/raw/"):
                data = self._upstream.get(path[len("/raw") :])
            else:
                data = None
        return (200, {}, data) if data is not None else (404, {}, b"Not Found")

    def _padding_of(self, origin: str, path: str) -> int:
        if origin != "cdn" or not path.startswith("/raw/"):
            return 0
        with self._lock:
            return self._padding.get(path[len("/raw") :], 0)


def _handler(server: HubServer, origin: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, with_body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            with server._lock:
                server.requests.append(
                    Request(origin, self.command, path, {k.lower(): v for k, v in self.headers.items()})
                )
            status, headers, body = server._resolve(path) if origin == "hub" else server._cdn(path)
            padding = server._padding_of(origin, path) if status == 200 else 0
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body) + padding))
            self.end_headers()
            if not with_body:
                return
            sent = 0
            try:
                for start in range(0, len(body), 1 << 16):
                    self.wfile.write(body[start : start + (1 << 16)])
                    sent += len(body[start : start + (1 << 16)])
                zeros = bytes(1 << 16)
                while sent < len(body) + padding:
                    chunk = zeros[: len(body) + padding - sent]
                    self.wfile.write(chunk)
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client stopped reading: what a size cap does
            finally:
                with server._lock:
                    server.sent[path] = server.sent.get(path, 0) + sent

        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def do_GET(self) -> None:
            self._answer(with_body=True)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler
