"""Data commands: ``tfjf make-data`` and ``tfjf inspect``."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import echo_json, user_errors

__all__ = ["COMMANDS", "inspect", "make_data"]

_GENERATORS = ("synthetic", "pythia")


@click.command("make-data")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--jets", type=int, default=10_000, show_default=True, help="Jets in total.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--files", type=int, default=1, show_default=True, help="Files to split jets into.")
@click.option(
    "--generator",
    type=click.Choice(_GENERATORS),
    default="synthetic",
    show_default=True,
    help="synthetic: numpy quark/gluon jets; pythia: Pythia 8 + FastJet (extra 'pythia').",
)
@click.option(
    "--row-group-size",
    type=int,
    default=1,
    show_default=True,
    help="Rows per Parquet row group (1 like the public DeepFalcon files).",
)
@user_errors
def make_data(
    out_dir: Path, jets: int, seed: int, files: int, generator: str, row_group_size: int
) -> None:
    """Write jets in the DeepFalcon Parquet schema into OUT_DIR."""
    from tfjetflows.data.generate import make_data as write_files
    from tfjetflows.data.pythia import MissingExtraError

    try:
        paths = write_files(
            out_dir,
            jets=jets,
            seed=seed,
            files=files,
            generator=generator,
            row_group_size=row_group_size,
        )
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    except MissingExtraError as err:
        raise click.ClickException(str(err)) from None
    for path in paths:
        click.echo(str(path))


@click.command("inspect")
@click.argument("data", nargs=-1, required=True)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config whose selection is counted (default: configs/maf_hits.yaml).",
)
@click.option("--set", "overrides", multiple=True, help="Config override section.key=value.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@user_errors
def inspect(
    data: tuple[str, ...], config_path: Path | None, overrides: tuple[str, ...], as_json: bool
) -> None:
    """Summarise jet files: counts, schema, sparsity, energies, labels, selection.

    DATA are Parquet files, globs or folders (a folder means every *.parquet inside).
    """
    from tfjetflows.config import load_config
    from tfjetflows.data.reader import resolve_paths
    from tfjetflows.data.summary import summarize_files

    config = load_config(config_path, overrides)
    representation = config.representation
    hits = representation.get("hits_per_channel") if representation["kind"] == "hits" else None
    summary = summarize_files(
        resolve_paths(list(data)),
        config.selection,
        hits_per_channel=hits,
        on_bad_jet=config.data.on_bad_jet,
    )
    summary["config"] = config.source
    if as_json:
        echo_json(summary)
        return
    click.echo(f"{summary['files']} files, {summary['jets']} jets (schema OK)")
    click.echo(f"labels: {summary['labels']}")
    for channel, figures in summary["channels"].items():
        hits_q = figures["hits"]
        energy_q = figures["energy_sum_gev"]
        click.echo(
            f"{channel:>6}: hits q10/q50/q90 {hits_q['q10']:.0f}/{hits_q['q50']:.0f}/"
            f"{hits_q['q90']:.0f}   energy sum q10/q50/q90 {energy_q['q10']:.1f}/"
            f"{energy_q['q50']:.1f}/{energy_q['q90']:.1f} GeV"
        )
    for channel, figures in summary.get("topk_energy_fraction", {}).items():
        click.echo(
            f"{channel:>6}: top-{figures['k']} hits keep {100 * figures['q50']:.1f}% of the "
            f"energy in the median jet ({100 * figures['q10']:.1f}% at q10)"
        )
    sel = summary["selection"]
    click.echo(f"selection ({config.source}): {sel['passed']} of {sel['scanned']} jets pass")
    if summary["bad_jets_skipped"]:
        click.echo(f"skipped {summary['bad_jets_skipped']} jets with NaN/inf pixels")


COMMANDS = [make_data, inspect]
