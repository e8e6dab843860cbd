import json
import re

from click.testing import CliRunner

from cli.main import main


def _report(model, data, out, *extra):
    args = ["report", str(model), "--data", str(data), "--n", "60", "--out", str(out), *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())


def test_report_writes_metrics_plots_and_html_that_references_them(trained_run, jet_data, tmp_path):
    out = tmp_path / "report"
    metrics = _report(trained_run.run_dir, jet_data, out)["model"]
    assert metrics["real_is_models_heldout_split"] is True
    assert metrics["real_jets"] == 28  # the run's validation split of jet_data
    assert set(metrics["w1"]) >= {"ecal_hits", "ecal_energy_sum", "jet_mass", "jet_tau21"}
    for entry in metrics["w1"].values():
        assert entry["w1"] >= 0 and entry["floor"] >= 0
    assert 0.0 <= metrics["classifier_observables"]["auc"] <= 1.0
    assert "classifier_low_level" in metrics
    represented = metrics["vs_represented"]
    assert set(represented["w1"]) == set(metrics["w1"])
    assert 0.0 <= represented["classifier_observables"]["auc"] <= 1.0
    page = (out / "index.html").read_text()
    referenced = set(re.findall(r'<img src="([^"]+)"', page))
    written = {p.name for p in out.glob("*.png")}
    assert referenced == written
    assert {"samples.png", "average_images.png", "training_curves.png"} <= written
    assert "FPD" in page


def test_report_of_a_conditional_model_checks_quark_gluon_separation(
    conditional_run, jet_data, tmp_path
):
    metrics = _report(conditional_run.run_dir, jet_data, tmp_path / "r")["model"]
    assert set(metrics["quark_gluon_auc"]) <= {"real", "generated"}
    assert "per_class" in metrics


def test_report_compare_puts_two_models_in_one_table(
    trained_run, conditional_run, jet_data, tmp_path
):
    out = tmp_path / "cmp"
    payload = _report(trained_run.run_dir, jet_data, out, "--compare", str(conditional_run.run_dir))
    assert payload["compare"]["model"] != payload["model"]["model"]
    page = (out / "index.html").read_text()
    assert page.count("<th>") == 3  # figure, model, compared model


def test_report_bad_input(tmp_path):
    result = CliRunner().invoke(
        main, ["report", str(tmp_path / "missing"), "--data", str(tmp_path), "--n", "5"]
    )
    assert result.exit_code != 0
    assert "no such SavedModel" in result.output
