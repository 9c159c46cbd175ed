"""GET /ui (the dashboard page) and GET /ui/static/... (its CSS and JavaScript).

Files are served from this package's static/ folder by an allow-list built at import, so
that no request path can reach outside it; there is no build step and nothing external.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from app.api.errors import ProblemError

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    # ES modules load only with a JavaScript media type.
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page may load only what this app serves; plots arrive as blob: URLs (fetched with
# the key), and the CSP makes "no external assets" a rule the browser enforces.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
# Revalidated on every load (the ETag answers 304), so that a new release is never mixed
# with cached modules of the old one.
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter(prefix="/ui", include_in_schema=False)


def _static_files() -> dict[str, Path]:
    """Every servable file under static/, by its path relative to it (POSIX form)."""
    return {
        path.relative_to(STATIC_DIR).as_posix(): path
        for path in sorted(STATIC_DIR.rglob("*"))
        if path.is_file() and path.suffix in MEDIA_TYPES
    }


STATIC_FILES = _static_files()
if "index.html" not in STATIC_FILES:
    # A wheel built without the package data would serve a 404 page; say why in the log.
    log.error("dashboard: %s/index.html is missing (package data not installed?)", STATIC_DIR)


def _file(name: str) -> FileResponse:
    path = STATIC_FILES.get(name)
    if path is None:
        raise ProblemError(404, f"the dashboard has no file {name!r}", type_="not-found")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)


@router.get("", response_class=FileResponse)
def dashboard() -> FileResponse:
    return _file("index.html")


@router.get("/")
def dashboard_slash() -> Response:
    # The page's links are absolute, but /ui is its one address.
    return RedirectResponse("/ui", status_code=308)


@router.get("/static/{name:path}", response_class=FileResponse)
def static_file(name: str) -> FileResponse:
    return _file(name)
