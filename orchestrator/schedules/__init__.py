"""Recurring and one-shot runs: timing maths, the facade, the run step, beat."""
