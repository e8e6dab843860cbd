"""Evaluation: physics observables, metrics and plots."""
