"""The viewer page: one HTML file with its style, script and data inlined, and an optional localhost server.

Inlined, so the file opens from disk in any browser with no server and no network (a CDN link would not
load on an offline machine). The data sits in a `<script type="application/json">` block, which the
browser does not run; `</` is escaped inside it so no string in a trajectory can end the block.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from pathlib import Path
from typing import Any

from pipeline.atomic import write_text

ASSETS = files("pipeline.view") / "assets"
SLOTS = {"/*STYLE*/": "viewer.css", "/*SCRIPT*/": "viewer.js"}
DATA_SLOT = "/*DATA*/"


def render_page(payload: dict[str, Any]) -> str:
    page = (ASSETS / "viewer.html").read_text(encoding="utf-8")
    for slot, asset in SLOTS.items():
        page = page.replace(slot, (ASSETS / asset).read_text(encoding="utf-8"))
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return page.replace(DATA_SLOT, data)


def write_page(payload: dict[str, Any], path: Path) -> int:
    """Write the page atomically; returns its size in bytes."""
    text = render_page(payload)
    write_text(path, text)
    return len(text.encode("utf-8"))


def serve_page(path: Path, port: int, ready: Callable[[str], None]) -> None:
    """Serve the page at http://127.0.0.1:PORT/ until interrupted (localhost only: trajectories stay on the
    machine). `ready` is told the address once the server listens."""
    body = path.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.split("#")[0].split("?")[0] not in ("/", "/index.html"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # stdout stays for the summary line
            pass

    with ThreadingHTTPServer(("127.0.0.1", port), Handler) as server:
        ready(f"http://127.0.0.1:{server.server_address[1]}/")
        server.serve_forever()
