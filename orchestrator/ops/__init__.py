"""Operating the orchestrator: metrics, reconcile, the dev stack, embedded Redis."""
