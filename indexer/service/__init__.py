"""The distributed service's core, Celery-free: `queueing` records the scans asked for, `stages`
are the steps any worker runs. `tasks/` wraps them in Celery tasks."""
