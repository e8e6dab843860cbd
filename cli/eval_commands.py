"""Evaluation commands: ``tfjf evaluate``."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import echo_json, user_errors

__all__ = ["COMMANDS", "evaluate"]


@click.command("evaluate")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", multiple=True, required=True, help="Real jets: files, globs, folders.")
@click.option(
    "--against", multiple=True, help="Other jets to compare with (e.g. MAF samples); repeatable."
)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Plot folder."
)
@click.option("--max-jets", type=int, default=2000, show_default=True, help="Jets per set.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@user_errors
def evaluate(
    model: Path,
    data: tuple[str, ...],
    against: tuple[str, ...],
    out: Path | None,
    max_jets: int,
    seed: int,
    as_json: bool,
) -> None:
    """Score jets with MODEL (run folder or SavedModel): NLL, and real vs artificial jets."""
    from tfjetflows.evaluation.density_eval import evaluate_model

    if max_jets <= 0:
        raise click.BadParameter(f"must be positive, got {max_jets}", param_hint="--max-jets")
    result = evaluate_model(
        model, list(data), against=list(against), out_dir=out, max_jets=max_jets, seed=seed
    )
    if as_json:
        echo_json(result)
        return
    test = result["test"]
    click.echo(
        f"test NLL: {test['nll']:.2f} +- {test['nll_stderr']:.2f} nats/jet, "
        f"{test['nats_per_dim']:.4f} nats/dim, {test['bits_per_dim']:.4f} bits/dim "
        f"({test['jets']} jets)"
    )
    for label, entry in result["comparisons"].items():
        click.echo(
            f"real vs {label}: ROC AUC {entry['auc_real_vs_other']:.3f} "
            f"(mean log-likelihood {entry['mean_jet_log_prob_real']:.1f} vs "
            f"{entry['mean_jet_log_prob_other']:.1f})"
        )


COMMANDS = [evaluate]
