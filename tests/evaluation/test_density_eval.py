import json

import pytest
from click.testing import CliRunner

from cli.main import main


def test_evaluate_json_separates_real_from_artificial(trained_run, jet_data, tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(trained_run.run_dir),
            "--data",
            str(jet_data),
            "--max-jets",
            "120",
            "--out",
            str(tmp_path / "plots"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    test = figures["test"]
    assert test["jets"] == 120
    assert test["nll_stderr"] > 0
    assert test["nats_per_dim"] == pytest.approx(test["nll"] / 51, rel=1e-6)
    random = figures["comparisons"]["random"]
    assert random["auc_real_vs_other"] > 0.9
    assert random["mean_jet_log_prob_real"] > random["mean_jet_log_prob_other"]
    assert "shuffled_energies" in figures["comparisons"]
    for entry in figures["comparisons"].values():
        assert (tmp_path / "plots").joinpath(entry["plot"].split("/")[-1]).is_file()


def test_evaluate_against_a_samples_file(trained_run, jet_data, tmp_path):
    samples = tmp_path / "samples.parquet"
    runner = CliRunner()
    made = runner.invoke(
        main,
        ["sample", str(trained_run.saved_model), "--n", "40", "--seed", "1", "--out", str(samples)],
    )
    assert made.exit_code == 0, made.output
    result = runner.invoke(
        main,
        [
            "evaluate",
            str(trained_run.saved_model),
            "--data",
            str(jet_data),
            "--max-jets",
            "40",
            "--against",
            str(samples),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    entry = json.loads(result.output)["comparisons"]["samples.parquet"]
    assert entry["jets"] == 40
    assert 0.0 <= entry["auc_real_vs_other"] <= 1.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "/nonexistent/model", "--data", "x"], "no such SavedModel"),
        (["evaluate", "{run}", "--data", "/nonexistent/*.parquet"], "no Parquet files match"),
        (["evaluate", "{run}", "--data", "{data}", "--max-jets", "0"], "must be positive"),
    ],
)
def test_evaluate_bad_input(trained_run, jet_data, args, message):
    args = [a.format(run=trained_run.run_dir, data=jet_data) for a in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
