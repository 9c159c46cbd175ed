"""/docs (Swagger UI) and /redoc, served whole by the app: no CDN, no internet.

Their scripts and styles are the `fastapi-offline` package's copies, mounted under
/static-offline-docs. Each page carries a Content-Security-Policy that lets it load only
from this app (ReDoc's bundle would otherwise fetch its "API docs by Redocly" logo from
its CDN), so the pages behave the same offline as online.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

STATIC_URL = "/static-offline-docs"
STATIC_DIR = Path(fastapi_offline.__file__).parent / "static"
# Inline scripts start Swagger UI and ReDoc; ReDoc's search runs in a blob: worker.
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; worker-src 'self' blob:; connect-src 'self'"
)


def install_docs(app: FastAPI, *, openapi_url: str = "/openapi.json") -> None:
    """Mount the docs' files and add /docs and /redoc."""
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static-offline-docs")
    favicon = f"{STATIC_URL}/favicon.png"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            # The API's only scheme is a bearer key: no OAuth2 flow to come back from.
            oauth2_redirect_url=None,
            swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=favicon,
            # persistAuthorization stays off: it would keep the key in localStorage,
            # past the browser session (the dashboard keeps it in sessionStorage only).
        )
        page.headers["Content-Security-Policy"] = CSP
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{STATIC_URL}/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = CSP
        return page
