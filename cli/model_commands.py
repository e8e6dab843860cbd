"""Model commands: ``tfjf fit``, ``tfjf distill``, ``tfjf export`` and ``tfjf sample``."""

from __future__ import annotations

import time
from pathlib import Path

import click

from cli.common import echo_json, user_errors

__all__ = ["COMMANDS", "distill", "export", "fit", "sample"]

LABEL_CHOICES = {"quark": 0.0, "gluon": 1.0, "0": 0.0, "1": 1.0}


@click.command("fit")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="YAML config (default: configs/maf_hits.yaml).",
)
@click.option(
    "--data",
    multiple=True,
    help="Parquet files, globs or folders (repeatable; default: built-in synthetic jets).",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run folder (default: runs/<config name>-<date-time>).",
)
@click.option("--epochs", type=int, default=None, help="Total epochs (overrides the config).")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir from its checkpoint.")
@click.option("--wandb/--no-wandb", "use_wandb", default=None, help="Log to Weights & Biases.")
@click.option("--set", "overrides", multiple=True, help="Config override section.key=value.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON at the end.")
@user_errors
def fit(
    config_path: Path | None,
    data: tuple[str, ...],
    run_dir: Path | None,
    epochs: int | None,
    resume: bool,
    use_wandb: bool | None,
    overrides: tuple[str, ...],
    as_json: bool,
) -> None:
    """Train a flow on jets, checkpoint it and export a SavedModel."""
    from tfjetflows.config import load_config

    if resume and run_dir is None:
        raise click.UsageError("--resume needs --run-dir (the run folder to continue)")
    if epochs is not None and epochs <= 0:
        raise click.BadParameter(f"must be positive, got {epochs}", param_hint="--epochs")
    extra = list(overrides)
    if epochs is not None:
        extra.append(f"training.epochs={epochs}")
    if data:
        extra.append(f"data.files={list(data)!r}")
    if use_wandb is not None:
        extra.append(f"wandb.enabled={str(use_wandb).lower()}")
    saved = run_dir / "config.yaml" if run_dir is not None else None
    if resume and saved is not None and saved.exists():
        if config_path is not None:
            click.echo(f"--resume: using the run's own {saved}, not {config_path}", err=True)
        config = load_config(saved, extra)
    else:
        config = load_config(config_path, extra)
    if run_dir is None:
        stem = Path(config.source).stem
        run_dir = Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"

    from tfjetflows.training.fit import fit as run_fit

    result = run_fit(config, run_dir=run_dir, resume=resume)
    validation = result.metrics.get("validation", {})
    if result.nan_step is not None:
        click.echo(f"training stopped at the NaN of step {result.nan_step}; weights restored")
    if validation:
        baseline = result.metrics.get("gaussian_baseline", {})
        click.echo(
            f"held-out NLL: {validation['nll']:.2f} +- {validation['nll_stderr']:.2f} nats/jet, "
            f"{validation['nats_per_dim']:.4f} nats/dim, {validation['bits_per_dim']:.4f} "
            f"bits/dim (diagonal Gaussian: {baseline.get('nats_per_dim', float('nan')):.4f} "
            "nats/dim)"
        )
    if result.is_chief:
        click.echo(f"run folder:     {result.run_dir}")
        click.echo(f"SavedModel:     {result.saved_model}")
    else:
        click.echo("worker finished: the chief writes the run folder and the SavedModel")
    if result.saved_model_copy is not None:
        click.echo(f"copied to:      {result.saved_model_copy}")
    if result.sample_png is not None:
        click.echo(f"sample picture: {result.sample_png}")
    if as_json:
        echo_json(
            {
                "run_dir": str(result.run_dir),
                "saved_model": str(result.saved_model),
                "sample_png": str(result.sample_png) if result.sample_png else None,
                "nan_step": result.nan_step,
                "epochs_done": result.epochs_done,
                "metrics": result.metrics,
            }
        )


@click.command("distill")
@click.argument("teacher_run", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Distillation YAML (default: configs/distill_iaf.yaml).",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Student run folder (default: <TEACHER_RUN>-student).",
)
@click.option("--epochs", type=int, default=None, help="Total epochs (overrides the config).")
@click.option("--resume", is_flag=True, help="Continue the student run from its checkpoint.")
@click.option("--wandb/--no-wandb", "use_wandb", default=None, help="Log to Weights & Biases.")
@click.option("--set", "overrides", multiple=True, help="Config override section.key=value.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON at the end.")
@user_errors
def distill(
    teacher_run: Path,
    config_path: Path | None,
    run_dir: Path | None,
    epochs: int | None,
    resume: bool,
    use_wandb: bool | None,
    overrides: tuple[str, ...],
    as_json: bool,
) -> None:
    """Distil the MAF of TEACHER_RUN into a one-pass IAF sampler (same SavedModel signatures)."""
    from tfjetflows.config import load_config
    from tfjetflows.training.distill import distill as run_distill
    from tfjetflows.training.distill import distill_config

    if epochs is not None and epochs <= 0:
        raise click.BadParameter(f"must be positive, got {epochs}", param_hint="--epochs")
    extra = list(overrides)
    if epochs is not None:
        extra.append(f"training.epochs={epochs}")
    if use_wandb is not None:
        extra.append(f"wandb.enabled={str(use_wandb).lower()}")
    run_dir = run_dir or teacher_run.parent / f"{teacher_run.name}-student"
    saved = run_dir / "config.yaml"
    if resume and saved.exists():
        if config_path is not None:
            click.echo(f"--resume: using the run's own {saved}, not {config_path}", err=True)
        config = load_config(saved, extra)
    else:
        config = distill_config(teacher_run, config_path, extra)
    result = run_distill(teacher_run, config, run_dir=run_dir, resume=resume)
    if result.nan_step is not None:
        click.echo(f"training stopped at the NaN of step {result.nan_step}; weights restored")
    speed = result.metrics.get("sampling_speed", {})
    if speed:
        click.echo(
            f"sampling: student {speed['student_jets_per_second']:.0f} jets/s, teacher "
            f"{speed['teacher_jets_per_second']:.1f} jets/s ({speed['speedup']:.0f}x)"
        )
    click.echo(f"run folder:     {result.run_dir}")
    click.echo(f"SavedModel:     {result.saved_model}")
    if result.saved_model_copy is not None:
        click.echo(f"copied to:      {result.saved_model_copy}")
    if as_json:
        echo_json(
            {
                "run_dir": str(result.run_dir),
                "saved_model": str(result.saved_model),
                "nan_step": result.nan_step,
                "epochs_done": result.epochs_done,
                "metrics": result.metrics,
            }
        )


@click.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Destination (default: saved_models/<run folder name>).",
)
@user_errors
def export(run_dir: Path, out: Path | None) -> None:
    """Export the trained model of RUN_DIR as a SavedModel usable with TensorFlow alone."""
    from tfjetflows.training.export_run import export_run

    path = export_run(run_dir, out or Path("saved_models") / run_dir.name)
    click.echo(str(path))


@click.command("sample")
@click.argument("saved_model", type=click.Path(path_type=Path))
@click.option("--n", "n_jets", type=int, required=True, help="Number of jets.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output Parquet file (DeepFalcon schema).",
)
@click.option("--label", default=None, help="quark or gluon (conditional models).")
@click.option("--pt", type=float, default=None, help="Jet pT in GeV (pT-conditional models).")
@click.option(
    "--png", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Picture."
)
@click.option(
    "--real",
    multiple=True,
    help="Real jets to show beside the samples (default: the model's training data).",
)
@click.option(
    "--batch-size", type=int, default=1000, show_default=True, help="Jets per model call."
)
@user_errors
def sample(
    saved_model: Path,
    n_jets: int,
    seed: int,
    out: Path,
    label: str | None,
    pt: float | None,
    png: Path | None,
    real: tuple[str, ...],
    batch_size: int,
) -> None:
    """Generate jets from SAVED_MODEL into a Parquet file (and a picture)."""
    if n_jets <= 0:
        raise click.BadParameter(f"must be positive, got {n_jets}", param_hint="--n")
    if batch_size <= 0:
        raise click.BadParameter(f"must be positive, got {batch_size}", param_hint="--batch-size")
    y = None
    if label is not None:
        if label.lower() not in LABEL_CHOICES:
            raise click.BadParameter(
                f"{label!r} is not one of quark, gluon, 0, 1", param_hint="--label"
            )
        y = LABEL_CHOICES[label.lower()]
    if pt is not None and pt <= 0:
        raise click.BadParameter(f"must be positive, got {pt}", param_hint="--pt")

    from tfjetflows.sampling import sample_to_parquet

    summary = sample_to_parquet(
        saved_model,
        out,
        n=n_jets,
        seed=seed,
        y=y,
        pt=pt,
        batch_size=batch_size,
        png=png,
        real=list(real),
    )
    click.echo(
        f"wrote {summary['jets']} jets to {out} in {summary['seconds']:.1f} s "
        f"({summary['jets_per_second']:.0f} jets/s)"
    )
    if png is not None:
        click.echo(f"picture: {png}")


COMMANDS = [fit, distill, export, sample]
