"""What every route reads from the application: its settings, its store, its output folder, its scan runner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Request
from sqlalchemy import Engine

from indexer.settings import ApiSettings

if TYPE_CHECKING:
    from indexer.api.runner import Runner


@dataclass(frozen=True, slots=True)
class ApiState:
    """The application's state, built once by `indexer.api.app.create_app`."""

    settings: ApiSettings
    engine: Engine
    out_dir: Path
    """Where each storage's outputs are published, in a folder named by its id (as the fleet's workers do)."""
    runner: Runner | None
    """What runs the scans the API queues, when no broker is configured; None in broker mode."""

    @property
    def mode(self) -> str:
        """``in-process`` (this process scans) or ``broker`` (the Celery fleet scans)."""
        return self.settings.mode()


def get_state(request: Request) -> ApiState:
    """The application's state (a FastAPI dependency)."""
    state: ApiState = request.app.state.api
    return state
