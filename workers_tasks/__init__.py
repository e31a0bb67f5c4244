"""Celery tasks of the orchestrator: thin wrappers over :mod:`orchestrator.jobs.steps`."""
