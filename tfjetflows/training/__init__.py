"""Training: callbacks, fit orchestration and the run directory."""
