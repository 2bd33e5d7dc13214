"""The live dashboard: a local HTTP server over a runs folder (``trainspect serve``).

Standard library only (:class:`http.server.ThreadingHTTPServer`). The page (``static/index.html`` with
``app.js`` and the vendored uPlot charting library; no CDN, it works offline) polls a small JSON API that
reads the runs' SQLite stores, so a run shows up and updates while it trains without anything started by
the training script.

Only the runs under the served folder can be read: a run is named by its path relative to that folder,
and absolute paths, ``..`` components and anything resolving outside the folder are refused (403). Static
files come only from the package's ``static`` folder.

API (all GET, JSON):

* ``/api/runs``: the runs (id, name, status, steps, start time, findings);
* ``/api/run?run=ID``: metadata, panels, layers, findings (with remedies), failures, last step;
* ``/api/series?run=ID&name=NAME[&since=STEP]``: a scalar or per-layer series;
* ``/api/histogram?run=ID&name=NAME[&step=STEP]``: the latest (or given) histogram, 2-D histogram or curve;
* ``/api/samples?run=ID[&step=STEP|latest|all]``: highest-loss examples, per-class accuracy, confusion.
"""

from __future__ import annotations

import json
import mimetypes
import os
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from trainspect.store import DB_FILENAME, list_runs, open_run
from trainspect.store.errors import StoreError
from trainspect.views.data import histogram_payload, run_summary, series_payload
from trainspect.views.samples import samples_payload

STATIC_DIR = Path(__file__).parent / "static"


class Forbidden(Exception):
    """A request for a path outside the runs folder (or the static folder)."""


class NotFound(Exception):
    """No such run, series or file."""


def safe_join(root: Path, relative: str) -> Path:
    """``root / relative``, refusing absolute paths, ``..`` components and anything resolving outside ``root``.

    Raises:
        Forbidden: for such a path (never touches the file system outside ``root``).
    """
    if not relative or "\x00" in relative:
        raise Forbidden("empty path or NUL byte")
    if relative.startswith(("/", "\\")) or PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).drive:
        raise Forbidden(f"absolute path {relative!r} refused: only runs inside the served folder can be read")
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    if any(part == ".." for part in parts):
        raise Forbidden(f"path {relative!r} refused: '..' is not allowed")
    root = root.resolve()
    path = (root / Path(*parts)).resolve()
    if path != root and root not in path.parents:  # a symlink pointing outside the folder
        raise Forbidden(f"path {relative!r} resolves outside the served folder")
    return path


class Dashboard:
    """The dashboard's data side, independent of HTTP (the handler and the tests call it).

    Args:
        root: the runs folder served; a single run folder serves that run (its parent is not exposed).
    """

    def __init__(self, root: str | os.PathLike[str]):
        path = Path(root).resolve()
        if not path.exists():
            raise FileNotFoundError(f"trainspect serve: {path} does not exist; pass a run folder or a runs folder")
        if not path.is_dir():
            raise NotADirectoryError(f"trainspect serve: {path} is not a folder")
        self.root = path
        self.single_run = (path / DB_FILENAME).exists()

    def run_path(self, run_id: str) -> Path:
        if self.single_run and run_id in (".", ""):
            return self.root
        path = safe_join(self.root, run_id)
        if not (path / DB_FILENAME).exists():
            raise NotFound(f"no run {run_id!r} in {self.root}")
        return path

    def run_id(self, path: Path) -> str:
        rel = path.resolve().relative_to(self.root).as_posix()
        return rel if rel else "."

    def runs(self) -> list[dict[str, Any]]:
        out = []
        for path in list_runs(self.root):
            entry: dict[str, Any] = {"id": self.run_id(path), "name": path.name}
            try:
                with open_run(path) as r:
                    meta = r.meta
                    last = r.last_step
                    entry.update(
                        name=meta.get("name", path.name), status=meta.get("status", "?"),
                        start_time=meta.get("start_time"), model=meta.get("model_class"),
                        steps=0 if last is None else last + 1, findings=len(r.findings()),
                    )
            except (StoreError, Exception) as error:  # one unreadable run must not hide the others
                entry.update(status=f"unreadable: {error}")
            out.append(entry)
        return out

    def handle(self, route: str, query: dict[str, str]) -> Any:
        if route == "runs":
            return {"root": str(self.root), "single_run": self.single_run, "runs": self.runs()}
        run_id = query.get("run")
        if run_id is None:
            raise ValueError("missing parameter run")
        path = self.run_path(run_id)
        with open_run(path) as reader:
            if route == "run":
                return {"id": run_id, **run_summary(reader)}
            name = query.get("name")
            if route == "series":
                if not name:
                    raise ValueError("missing parameter name")
                since = query.get("since")
                try:
                    return series_payload(reader, name, None if since is None else int(since))
                except KeyError as error:
                    raise NotFound(str(error)) from None
            if route == "histogram":
                if not name:
                    raise ValueError("missing parameter name")
                step = query.get("step")
                try:
                    return histogram_payload(reader, name, None if step in (None, "latest") else int(step))
                except KeyError as error:
                    raise NotFound(str(error)) from None
            if route == "samples":
                return samples_payload(reader, query.get("step"), int(query.get("top", 24)))
        raise NotFound(f"no API route {route!r}")


def make_handler(dashboard: Dashboard) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "trainspect"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the terminal belongs to the user
            pass

        def do_GET(self) -> None:
            try:
                self._get()
            except Forbidden as error:
                self._json({"error": str(error)}, HTTPStatus.FORBIDDEN)
            except NotFound as error:
                self._json({"error": str(error)}, HTTPStatus.NOT_FOUND)
            except (ValueError, StoreError) as error:
                self._json({"error": str(error)}, HTTPStatus.BAD_REQUEST)
            except (BrokenPipeError, ConnectionResetError):
                pass
            except Exception as error:  # pragma: no cover - reported to the page, the server keeps running
                self._json({"error": f"{type(error).__name__}: {error}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

        def _get(self) -> None:
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            if path == "/favicon.ico":
                self.send_response(HTTPStatus.NO_CONTENT)
                self.end_headers()
                return None
            if path in ("/", "/index.html"):
                return self._file(STATIC_DIR / "index.html")
            if path.startswith("/static/"):
                return self._file(safe_join(STATIC_DIR, path[len("/static/"):]))
            if path.startswith("/api/"):
                query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                return self._json(dashboard.handle(path[len("/api/"):], query))
            raise NotFound(f"no page {path}")

        def _file(self, path: Path) -> None:
            if not path.is_file():
                raise NotFound(f"no file {path.name}")
            data = path.read_bytes()
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if kind.startswith("text/") or kind.endswith("javascript"):
                kind += "; charset=utf-8"
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.write(data)

        def _json(self, payload: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
            data = json.dumps(payload, allow_nan=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

    return Handler


class DashboardServer:
    """A running dashboard. ``port=0`` picks a free port; ``url`` says where it listens.

    Example::

        server = DashboardServer("runs", port=0).start()   # in a background thread
        print(server.url)
        ...
        server.stop()
    """

    def __init__(self, root: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8765):
        self.dashboard = Dashboard(root)
        self.httpd = ThreadingHTTPServer((host, port), make_handler(self.dashboard))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> DashboardServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="trainspect-dashboard", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self, ready: Callable[[str], None] | None = None) -> None:
        if ready is not None:
            ready(self.url)
        try:
            self.httpd.serve_forever()
        finally:
            self.httpd.server_close()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
