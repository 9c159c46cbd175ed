"""The dashboard at /ui: static HTML, CSS and ES modules that talk to the authenticated API.

The page itself needs no key (like /docs); everything it shows comes through /api/v1 with
the key the user types, so this package has no access to data of its own.
"""

from app.ui.routes import router

__all__ = ["router"]
