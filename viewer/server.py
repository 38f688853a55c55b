"""The viewer's HTTP server: URLs to the functions of `viewer/data.py` as JSON, the page's static files, plotly.js
from the installed `plotly` package, and the images of run folders. Standard library only, bound to 127.0.0.1;
nothing is fetched from anywhere else.

    GET /                         the page (static/index.html)
    GET /static/<file>            app.js, style.css; /static/plotly.min.js from the plotly package
    GET /api/runs                 the runs table
    GET /api/metrics?run=A&run=B[&group=KEY]   metric series per run (and per group)
    GET /api/run?run=A            summary, overrides, config, plots of one run
    GET /api/diff?a=A&b=B         config keys whose values differ
    GET /api/sweeps               the multirun folders
    GET /api/sweep?sweep=S[&refresh=1]   a sweep's table and figures (viewer/sweeps.py: cached analysis)
    GET /files/<path>             an image under the served folder (nothing outside it)
"""
from __future__ import annotations

import importlib.resources
import json
import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from core.errors import ConfigError
from viewer import data, sweeps

STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}
LOCAL_HOSTS = ("127.0.0.1", "localhost")

logger = logging.getLogger("viewer")


def plotly_js() -> Path:
    """plotly.min.js as the installed plotly Python package ships it."""
    return Path(str(importlib.resources.files("plotly") / "package_data" / "plotly.min.js"))


def _one(query: dict[str, list[str]], key: str) -> str:
    values = query.get(key, [])
    if len(values) != 1:
        raise ConfigError(key, values, "exactly one value in the query")
    return values[0]


def api(root: Path, route: str, query: dict[str, list[str]]) -> Any:
    """The JSON answer of an /api route (KeyError: no such route; ConfigError: a bad argument)."""
    routes: dict[str, Callable[[], Any]] = {
        "runs": lambda: data.runs_table(root),
        "metrics": lambda: data.runs_metrics(root, query.get("run", []), (query.get("group") or [None])[0]),
        "run": lambda: data.run_detail(root, _one(query, "run")),
        "diff": lambda: data.config_diff(root, _one(query, "a"), _one(query, "b")),
        "sweeps": lambda: sweeps.find_sweeps(root),
        "sweep": lambda: sweeps.sweep_analysis(root, _one(query, "sweep"), query.get("refresh") == ["1"]),
    }
    return routes[route]()


class Handler(BaseHTTPRequestHandler):
    """Serves one root folder (`server.root`), read only."""

    server: "ViewerServer"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.headers.get("Host", "").rsplit(":", 1)[0] not in LOCAL_HOSTS:  # no DNS rebinding from web pages
            return self.send_text(HTTPStatus.FORBIDDEN, "only local requests are served")
        url = urlsplit(self.path)
        path = unquote(url.path)
        try:
            if path in ("/", "/index.html"):
                return self.send_file(STATIC / "index.html", STATIC_FILES["index.html"])
            if path == "/static/plotly.min.js":
                return self.send_file(plotly_js(), "text/javascript; charset=utf-8", cache=True)
            if path.startswith("/static/") and path[len("/static/"):] in STATIC_FILES:
                name = path[len("/static/"):]
                return self.send_file(STATIC / name, STATIC_FILES[name])
            if path.startswith("/api/"):
                answer = data.jsonable(api(self.server.root, path[len("/api/"):], parse_qs(url.query)))
                return self.send_bytes(HTTPStatus.OK, json.dumps(answer, allow_nan=False).encode(),
                                       "application/json")
            if path.startswith("/files/"):
                file = data.file_path(self.server.root, path[len("/files/"):])
                return self.send_file(file, IMAGE_TYPES[file.suffix.lower()])
        except KeyError:
            pass
        except ConfigError as err:
            return self.send_json_error(HTTPStatus.NOT_FOUND, str(err))
        except Exception as err:  # a bug or an unreadable folder: say so on the page, keep serving
            logger.exception("error answering %s", self.path)
            return self.send_json_error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(err).__name__}: {err}")
        self.send_text(HTTPStatus.NOT_FOUND, f"not found: {path}")

    def send_bytes(self, status: int, body: bytes, content_type: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=86400" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def send_file(self, file: Path, content_type: str, cache: bool = False) -> None:
        self.send_bytes(HTTPStatus.OK, file.read_bytes(), content_type, cache)

    def send_text(self, status: int, text: str) -> None:
        self.send_bytes(status, text.encode(), "text/plain; charset=utf-8")

    def send_json_error(self, status: int, message: str) -> None:
        self.send_bytes(status, json.dumps({"error": message}).encode(), "application/json")

    def log_message(self, format: str, *args: Any) -> None:  # quiet: requests are logged at debug level only
        logger.debug("%s " + format, self.address_string(), *args)


class ViewerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, port: int = 8765, host: str = "127.0.0.1"):
        self.root = Path(root).resolve()
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"
