"""attack.py end to end (tiny stand-in prior, tiny budget, digits): results.json, federation captures
as a source, and bad input -> one clear line on stderr, exit code 2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _attack_fixtures import TinyPrior, make_observation, one_torch_thread  # noqa: F401
from ggl.cli import attack_main
from ggl.audit.metrics import psnr

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SUMMARY_KEYS = {"psnr_mean", "psnr_std", "ssim_mean", "lpips_mean", "label_acc", "baseline_psnr_mean",
                "n_images", "wall_seconds"}
RECORD_KEYS = {"setting", "defense", "attacker", "adaptive", "seed", "round", "capture_id", "victim_index", "image",
               "label", "label_pred", "batch_label_acc", "metrics", "baselines", "leakage", "federation", "probe"}


@pytest.fixture
def tiny_prior(monkeypatch):
    """attack.py with the tiny stand-in prior instead of the shipped checkpoint."""
    holder = {"prior": TinyPrior()}
    monkeypatch.setattr("ggl.jobs.attack.load_attack_prior", lambda path, *_: holder["prior"])
    return holder


def _args(tmp_path, *more):
    return [f"output_dir={tmp_path / 'runs'}", "logger.mode=disabled", "data.name=digits", "audit.num_images=2",
            "attack.optimizer=cmaes", "attack.generations=3", "attack.population=8", "attack.progress=false", *more]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_fresh_attack_writes_results_json_grid_and_captures(tmp_path, tiny_prior, capsys):
    assert attack_main(_args(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "fp32: PSNR" in out and "q4: PSNR" in out and "baseline" in out
    run = Path(tmp_path / "runs" / "attack" / "latest").resolve()
    res = json.loads((run / "results.json").read_text())
    assert res["settings"] == ["fp32", "q4"]
    assert res["config"]["attack"]["generations"] == 3
    for setting in res["settings"]:
        s = res["summary"][setting]
        assert SUMMARY_KEYS <= set(s)
        assert s["n_images"] == 2 and 0.0 <= s["label_acc"] <= 1.0 and s["wall_seconds"] > 0
        assert isinstance(s["psnr_mean"], float) and isinstance(s["baseline_psnr_mean"], float)
        assert s["lpips_mean"] is None or isinstance(s["lpips_mean"], float)
        assert not (run / setting / "results.json").exists()  # ggl.records/2: one results.json per run
        assert (run / setting / "grid.png").stat().st_size > 0
        # the images the report draws are the ones that were scored, in the rows' order
        images = torch.load(run / setting / "images.pt", weights_only=True)
        assert {k: tuple(v.shape) for k, v in images.items()} == {
            "originals": (2, 1, 32, 32), "reconstructions": (2, 1, 32, 32), "prior_only": (2, 1, 32, 32)}
        scored = [r["metrics"]["psnr"] for r in res["records"] if r["setting"] == setting]
        assert psnr(images["reconstructions"], images["originals"]).tolist() == pytest.approx(scored, abs=1e-3)
    assert res["records_format"] == "ggl.records/2" and "per_image" not in res and len(res["records"]) == 4
    for rec in res["records"]:
        assert RECORD_KEYS <= set(rec) and rec["attacker"] == "ggl-l2" and rec["probe"] == "fedsgd"
    assert (run / "grid.png").stat().st_size > 0
    assert len(list((run / "captures" / "ground_truth").glob("*.pt"))) == 2


def test_federation_captures_feed_attack_py_source(make_cfg, tmp_path, tiny_prior, capsys):
    from ggl.jobs.federation import run_federation

    cfg = make_cfg("model.name=lenet", "audit.rounds=[1]", "audit.num_images=2", "audit.victim_client=1",
                   config="fed_q4.yaml")
    fed = run_federation(cfg)
    caps = sorted((Path(fed["run_dir"]) / "audit").rglob("*.pt"))
    assert [p.parent.name for p in caps] == ["ground_truth", "ground_truth", "q4", "q4"]
    from ggl.attack.observation import Observation

    obs = Observation.load(Path(fed["run_dir"]) / "audit" / "observations" / "q4" / "r0001_b000.pt")
    assert obs.round == 1 and obs.client_id == 1 and obs.arch == "lenet" and obs.defenses[0]["bits"] == 4
    source = Path(fed["run_dir"]).parent / "latest"
    assert attack_main(_args(tmp_path, f"source={source}", "name=from_fed")) == 0
    res = json.loads((tmp_path / "runs" / "from_fed" / "latest" / "results.json").read_text())
    assert res["settings"] == ["q4"]
    assert [r["round"] for r in res["records"]] == [1, 1]
    assert res["summary"]["q4"]["n_images"] == 2
    # the federation a capture came from is recorded in the attack's records, not inferred from paths
    assert len(res["records"]) == 2 and res["federation"] is not None
    assert (res["federation"]["name"], res["federation"]["stamp"]) == Path(fed["run_dir"]).parts[-2:]


def test_source_without_captures_is_one_line_exit_2(tmp_path, tiny_prior, capsys):
    empty = tmp_path / "runs" / "fed_x" / "20260101-000000"
    empty.mkdir(parents=True)
    assert attack_main(_args(tmp_path, f"source={empty}")) == 2
    assert "holds no audit captures" in _one_error_line(capsys)
    assert attack_main(_args(tmp_path, f"source={tmp_path / 'nowhere'}")) == 2
    assert "does not exist" in _one_error_line(capsys)


@pytest.mark.parametrize("key", ["attack.generations=0", "attack.adam_steps=0 attack.optimizer=adam"])
def test_zero_budget_is_one_line_exit_2(tmp_path, tiny_prior, capsys, key):
    assert attack_main(_args(tmp_path, *key.split())) == 2
    line = _one_error_line(capsys)
    assert key.split()[0].split("=")[0] in line and "budget" in line


def test_prior_that_does_not_fit_the_model_is_one_line_exit_2(tmp_path, tiny_prior, capsys):
    tiny_prior["prior"] = TinyPrior(channels=3)
    assert attack_main(_args(tmp_path)) == 2
    line = _one_error_line(capsys)
    assert "3x32x32" in line and "1x32x32" in line
    tiny_prior["prior"] = TinyPrior(num_classes=4)
    assert attack_main(_args(tmp_path)) == 2
    assert "4 classes" in _one_error_line(capsys)
    # the errors came after the run folder was made: nothing left behind, no `latest`
    left = [p for p in (tmp_path / "runs").rglob("*") if p.is_file() or p.is_symlink() or p.name[:2] == "20"]
    assert left == []


def test_observation_from_another_architecture_is_one_line_exit_2(tmp_path, tiny_prior, capsys):
    x, y = torch.rand(1, 1, 32, 32), torch.tensor([1])
    obs = make_observation(x, y, arch="cnn", init="default")
    obs.arch = "lenet"  # a file claiming lenet that holds a cnn's weights
    path = obs.save(tmp_path / "caps" / "observations" / "fp32" / "r0000_b000.pt")
    assert attack_main(_args(tmp_path, f"source={path}")) == 2
    line = _one_error_line(capsys)
    assert "does not fit architecture 'lenet'" in line
    obs.arch = "vgg99"
    obs.save(path)
    assert attack_main(_args(tmp_path, f"source={path}")) == 2
    assert "architecture 'vgg99' is unknown" in _one_error_line(capsys)


def test_missing_prior_file_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ggl.gan.prior")
    assert attack_main(_args(tmp_path, f"attack.prior={tmp_path / 'no_such_prior.pt'}")) == 2
    _one_error_line(capsys)


def test_portfolio_runs_each_attacker_as_a_setting_and_records_refusals(tmp_path, tiny_prior, capsys):
    """attack.attackers: one setting per (defence, attacker); EOT refuses the deterministic q4 and is
    recorded with its reason instead of ending the run."""
    assert attack_main(_args(tmp_path, "name=pf", "attack.attackers=[ggl-l2,ggl-eot]")) == 0
    res = json.loads((tmp_path / "runs" / "pf" / "latest" / "results.json").read_text())
    assert res["settings"] == ["fp32@ggl-l2", "q4@ggl-l2"]
    assert set(res["refused"]) == {"fp32@ggl-eot", "q4@ggl-eot"}
    assert {r["attacker"] for r in res["records"]} == {"ggl-l2"} and len(res["records"]) == 4
    assert "skipped" in capsys.readouterr().err
