"""The wire layer: the Workers API's models, routes, HTTP clients and retry policy.

Imports neither the store nor Celery."""
