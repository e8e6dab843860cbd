"""Evaluation commands: ``tfjf evaluate`` and ``tfjf report``."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import echo_json, user_errors

__all__ = ["COMMANDS", "evaluate", "report"]


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


@click.command("report")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", multiple=True, required=True, help="Real jets: files, globs, folders.")
@click.option("--n", "n_jets", type=int, default=2000, show_default=True, help="Jets per set.")
@click.option("--samples", default=None, help="Read generated jets from this file instead.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("report"),
    show_default=True,
    help="Report folder.",
)
@click.option("--compare", type=click.Path(path_type=Path), default=None, help="Second model.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@user_errors
def report(
    model: Path,
    data: tuple[str, ...],
    n_jets: int,
    samples: str | None,
    out: Path,
    compare: Path | None,
    seed: int,
) -> None:
    """Compare MODEL's jets with real ones: W1, FPD, classifier AUC, plots, index.html."""
    from tfjetflows.evaluation.report import model_metrics, write_report

    if n_jets <= 0:
        raise click.BadParameter(f"must be positive, got {n_jets}", param_hint="--n")
    metrics, arrays = model_metrics(model, list(data), n=n_jets, seed=seed, samples=samples)
    other = None
    if compare is not None:
        other, _ = model_metrics(compare, list(data), n=n_jets, seed=seed)
    run_dir = model if (model / "history.csv").is_file() else None
    page = write_report(out, metrics, arrays, run_dir=run_dir, compare=other)
    fpd = metrics["fpd"]
    auc = metrics["classifier_observables"]
    click.echo(
        f"FPD {fpd['fpd']:.4g} (floor {fpd['floor']:.4g}); classifier AUC on observables "
        f"{auc['auc']:.3f} +- {auc['auc_err']:.3f}"
    )
    click.echo(f"report: {page}")


COMMANDS = [evaluate, report]
