"""gunicorn settings for the Procfile: metrics shared by all workers, and their cleanup.

Loaded by the gunicorn master (`--config python:chat_server.gunicorn_conf`) before any worker
starts. prometheus_client picks its multiprocess mode when it is first imported, so the
directory is set here, at import, and chat_server.metrics (the one module that imports the
library) is imported in the master only on demand.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

#: prometheus_client's own variable (chat_server.metrics.MULTIPROCESS_ENV): named here, since
#: importing that module would import prometheus_client before the variable is set.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _metrics_directory() -> str:
    configured = os.environ.get(MULTIPROCESS_ENV)
    if not configured:
        configured = tempfile.mkdtemp(prefix="chat-server-metrics-")
        os.environ[MULTIPROCESS_ENV] = configured
    # Values of a previous run would be summed into this one's.
    for stale in Path(configured).glob("*.db"):
        stale.unlink()
    return configured


metrics_directory = _metrics_directory()


def child_exit(_server: Any, worker: Any) -> None:
    """A worker is gone: its live gauges (connections, subscriptions) stop counting."""
    from chat_server.metrics import mark_process_dead

    mark_process_dead(worker.pid)


def post_worker_init(worker: Any) -> None:
    """In each worker, once the app is loaded and before it starts: the application's log
    format and level (gunicorn's own loggers keep theirs), GC tuning (gctune.py), and the
    server with a bound on the request head time (web/serving.py)."""
    from chat_server.logs import configure_logging_from_env
    from chat_server.web.app import tune_gc_on_startup
    from chat_server.web.serving import gunicorn_runner

    configure_logging_from_env()
    worker.wsgi.on_startup.append(tune_gc_on_startup)
    # aiohttp's worker runs the AppRunner an async `wsgi` callable returns, as it is.
    worker.wsgi = gunicorn_runner(worker)
