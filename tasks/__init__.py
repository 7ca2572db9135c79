"""The Celery service: thin tasks over the `indexer` core. `indexer` never imports this package."""
