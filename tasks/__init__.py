"""The Celery service: thin tasks over the `indexer` core. `indexer` never imports this package.

``celery -A tasks worker`` finds the app here; the tasks are in `tasks.jobs`.
"""

from tasks.app import app

__all__ = ["app"]
