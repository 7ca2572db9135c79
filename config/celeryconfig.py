"""An override of the service's Celery settings, applied over the defaults of `tasks.celeryconfig`.

Point ``PCRS_INDEXER_CELERY_CONFIG`` at a file like this one (the service image does) to change
how Celery runs without touching the package: every lower-case name defined here replaces the
default of the same name. The settings a deployment usually changes (broker, schedule, retries)
are environment variables, see the README; this file is for Celery's own options.
"""

# Examples (uncomment to apply):
# worker_max_tasks_per_child = 100          # recycle worker processes after 100 tasks
# worker_send_task_events = False           # no events for Flower
# broker_transport_options = {"visibility_timeout": 3600}
