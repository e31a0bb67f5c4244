"""A job's life: its record and rules, the Celery-side steps, the stream follower."""
