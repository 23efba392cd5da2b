"""The status page (DESIGN 3.7): one self-contained HTML page with its script and style sheet.

The files are served without a token; the page reads the admin API itself and asks for the admin
token once when the API answers 401/403, keeping it in the browser's ``sessionStorage``.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

__all__ = ["add_status_page_routes"]

_FILES = {"/": ("index.html", "text/html"),
          "/status/app.js": ("app.js", "text/javascript"),
          "/status/style.css": ("style.css", "text/css")}


def add_status_page_routes(app: web.Application) -> None:
    """Register ``GET /`` and the page's own files on ``app``."""
    for path, (name, content_type) in _FILES.items():
        body = resources.files(__package__).joinpath(name).read_bytes()

        async def handler(request: web.Request, body: bytes = body, content_type: str = content_type) -> web.Response:
            return web.Response(body=body, content_type=content_type, charset="utf-8",
                                headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

        app.router.add_get(path, handler)
