"""``/docs``: Swagger UI served from the ``swagger-ui-bundle`` package, never from a CDN.

Why: FastAPI's default ``/docs`` loads Swagger UI's JavaScript from a CDN, on the same origin as
the dashboard, whose ``localStorage`` holds the API token; a compromised or spoofed CDN script would
read it. Here the assets come from the installed package (``/docs/assets/...``) and the page's CSP
allows scripts from this origin only (plus its one inline script, by hash). ReDoc has no offline
bundle, so ``/redoc`` is off; ``/openapi.json`` is the machine-readable contract.
"""

from __future__ import annotations

from functools import cache

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from ..dashboard import content_security_policy

ASSETS = "/docs/assets"


def add_docs(app: FastAPI) -> None:
    """Mount the packaged Swagger UI assets and the ``/docs`` page (the app has ``docs_url=None``)."""
    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @cache
    def page() -> tuple[bytes, str]:
        html = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
        ).body
        inline = content_security_policy(html.decode()).split("; ")[1]  # "script-src 'sha256-...'"
        csp = "; ".join(
            [
                "default-src 'none'",
                inline.replace("script-src ", "script-src 'self' ", 1),
                "style-src 'self' 'unsafe-inline'",  # Swagger UI styles its own elements inline
                "img-src 'self' data:",
                "connect-src 'self'",
                "base-uri 'none'",
                "form-action 'none'",
                "frame-ancestors 'none'",
            ]
        )
        return bytes(html), csp

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        html, csp = page()
        return HTMLResponse(html, headers={"Content-Security-Policy": csp, "Cache-Control": "no-cache"})
