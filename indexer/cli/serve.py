"""``pcrs-indexer serve``: the HTTP API (`indexer.api`) on uvicorn."""

from __future__ import annotations

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]), help="uvicorn's log level.")
def serve(host: str, port: int, log_level: str) -> None:
    """Serve the PCRS data API and the scanner's storage routes over the store (see the README).

    With no PCRS_INDEXER_BROKER_URL the server runs the scans it queues itself, in threads of its
    own process; with one, it only queues them and the Celery fleet scans. GET /healthz says which.
    """
    import uvicorn

    from indexer.api.app import create_app

    app = create_app()
    click.echo(f"pcrs-indexer: serving on http://{host}:{port} ({app.state.api.mode} mode)", err=True)
    # uvicorn's loggers go through the command's handler, which scrubs credentials; no access log: a
    # download URL carries its token.
    uvicorn.run(app, host=host, port=port, log_config=None, log_level=log_level, access_log=False,
                timeout_graceful_shutdown=10)
