"""The Celery settings of the pcrs-indexer service, read by `tasks.app` before any override.

Every value a deployment changes comes from the environment through `indexer.settings`
(``PCRS_INDEXER_BROKER_URL``, ``PCRS_INDEXER_REINDEX_EVERY``…); what stays here is how the
service must run to be correct: JSON messages only, acknowledged after the task ran and requeued
when its worker dies, one message reserved at a time, and the beat schedule. A module named by
``PCRS_INDEXER_CELERY_CONFIG`` (``config/celeryconfig.py`` is one) is applied over these.
"""

from __future__ import annotations

from indexer.settings import get_fleet_settings

_settings = get_fleet_settings()

broker_url = _settings.broker_url
result_backend = _settings.results_url()

# Messages are JSON: task arguments are ids and plain values, never pickles.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
result_expires = 24 * 3600
# Results keep no task arguments: a projet document sent to pcrs.publish may carry storage passwords
# (senders should also give it a `kwargsrepr`, which is what workers log and Flower shows).
result_extended = False
task_track_started = True
task_default_queue = "pcrs"
# Control tasks have a queue of their own: a worker consuming only it (`-Q pcrs.control`) runs
# them even while every process of the others reads a slow storage. A worker started without
# -Q consumes both queues.
task_queues = {name: {"exchange": name, "exchange_type": "direct", "routing_key": name}
               for name in ("pcrs", "pcrs.control")}
task_routes = {name: {"queue": "pcrs.control"} for name in (
    "pcrs.watchdog", "pcrs.reindex_due", "pcrs.finalize_scan", "pcrs.publish", "pcrs.requeue")}

# At-least-once: a task is acknowledged once it ran; a worker that dies gives its message back.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
worker_cancel_long_running_tasks_on_connection_loss = True
broker_connection_retry_on_startup = True
broker_connection_max_retries = None
broker_transport_options = {
    # A message taken by a worker that vanished (kill -9, lost machine) is delivered again after
    # this long; a live worker renews the messages it holds (tasks.visibility), however long
    # its tasks and retry countdowns.
    "visibility_timeout": _settings.visibility_timeout_s,
    "unacked_restore_interval": _settings.broker_restore_every_s,
    "unacked_restore_throttle": 1,
    # The lock of that restore sweep (a few milliseconds' work) lapses after 10 s, not kombu's
    # 5 minutes: a worker killed while sweeping must not stop every other worker's sweeps.
    "unacked_mutex_expire": 10,
    "socket_timeout": 30,
    "socket_connect_timeout": 10,
    "health_check_interval": 25,
}
result_backend_transport_options = {"socket_timeout": 30, "socket_connect_timeout": 10}
result_backend_always_retry = True
result_backend_max_retries = 20
redis_backend_health_check_interval = 25

worker_hijack_root_logger = False
worker_send_task_events = True
task_send_sent_event = True

beat_schedule_filename = str(_settings.data_dir / "celerybeat-schedule")
beat_schedule = {
    # Re-index every published storage whose last scan is older than PCRS_INDEXER_REINDEX_EVERY
    # (a week by default), at most PCRS_INDEXER_REINDEX_BATCH per tick, longest-waiting first.
    "reindex-due-storages": {"task": "pcrs.reindex_due", "schedule": _settings.reindex_check_every_s},
    # Requeue the scans whose heartbeat stopped for PCRS_INDEXER_STALE_AFTER.
    "requeue-stalled-scans": {"task": "pcrs.watchdog", "schedule": _settings.watchdog_every_s},
}
