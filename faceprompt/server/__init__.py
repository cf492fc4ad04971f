"""``faceprompt serve``: an HTTP service for identities and generation jobs, and its web page.

``create_app`` builds the FastAPI app over a :class:`Store` (SQLite or Postgres through SQLAlchemy); workers
(threads of the server, or ``faceprompt worker`` processes) claim the jobs from that store.
"""

from .app import create_app
from .jobs import Worker
from .settings import Limits, ServiceSettings
from .store import Store

__all__ = ["Limits", "ServiceSettings", "Store", "Worker", "create_app"]
