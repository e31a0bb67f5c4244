"""Schedule tasks (placeholder until written)."""
