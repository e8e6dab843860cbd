"""Normalizing flows: MADE, batch-norm bijector, MAF and BNAF."""
