"""The REST API: start, watch, cancel and resume runs; download pairs; refine one response.

``uvicorn services.api:create_app --factory`` (what ``spar api`` runs). Layout, as in FastAPI's
full-stack template: :mod:`.settings` (environment), :mod:`.deps` (injected settings, Redis,
scheduler, auth), :mod:`.models` (request/response models), :mod:`.views` (read models of runs),
:mod:`.routes` (one module per resource), :mod:`.main` (the app).
"""

from .main import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
