"""Spend and traffic control: budget caps, concurrency limits, the fleet rate."""
