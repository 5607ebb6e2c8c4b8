"""W&B that behaves, offline only (no test talks to a W&B server): WANDB_* variables fill the keys the
config leaves null; bad names fail at load; online without a key or a server falls back to offline with
one line; a federation and the attacks on its captures share a group; artifacts carry the lineage
captures -> attack -> report (read back from the offline runs' .wandb files); the report's per-image
table holds numbers."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from _attack_fixtures import TinyPrior, one_torch_thread  # noqa: F401
from _wandb_offline import artifacts, offline_runs, run_record, tables
from ggl.cli import attack_main, train_main
from ggl.core.errors import ConfigError
from ggl.runs.artifacts import prior_artifact_name
from ggl.runs.logger import LoggerConfig, resolve_logger

TINY_FED = ["data.name=digits", "fl.rounds=1", "data.num_clients=4", "fl.local_epochs=1",
            "trainer.enable_progress_bar=false"]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No WANDB_* settings and no stored W&B credentials (a HOME without a .netrc)."""
    for var in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / ".config" / "wandb"))
    return monkeypatch


def test_environment_fills_the_null_keys_and_an_explicit_key_wins(clean_env):
    assert resolve_logger(LoggerConfig()).mode == "offline"
    assert resolve_logger(LoggerConfig()).project == "ggl"
    clean_env.setenv("WANDB_MODE", "disabled")
    clean_env.setenv("WANDB_PROJECT", "from-env")
    clean_env.setenv("WANDB_ENTITY", "team")
    t = resolve_logger(LoggerConfig())
    assert (t.mode, t.project, t.entity) == ("disabled", "from-env", "team")
    t = resolve_logger(LoggerConfig(mode="offline", project="mine", entity="me"))
    assert (t.mode, t.project, t.entity) == ("offline", "mine", "me")
    clean_env.setenv("WANDB_MODE", "dryrun")  # W&B's old spelling of offline
    assert resolve_logger(LoggerConfig()).mode == "offline"
    clean_env.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ConfigError, match="WANDB_MODE"):
        resolve_logger(LoggerConfig())


def test_wandb_mode_disabled_in_the_environment_leaves_no_wandb_folder(clean_env, tmp_path, capsys):
    clean_env.setenv("WANDB_MODE", "disabled")
    assert train_main(["--config", "fed_q4.yaml", *TINY_FED, f"output_dir={tmp_path / 'runs'}"]) == 0
    run = (tmp_path / "runs" / "fed_q4" / "latest").resolve()
    assert (run / "results.json").is_file()
    assert not list(tmp_path.joinpath("runs").rglob("wandb")) and not (run / "wandb_id.txt").exists()


@pytest.mark.parametrize("override, env, key", [
    ("logger.project=my/audit", {}, "logger.project"),
    ("logger.entity=a:b", {}, "logger.entity"),
    ("logger.tags=['" + "x" * 65 + "']", {}, "logger.tags[0]"),
    (None, {"WANDB_PROJECT": "what?"}, "WANDB_PROJECT"),
])
def test_a_name_wandb_refuses_is_one_line_before_any_folder(clean_env, tmp_path, capsys, override, env, key):
    for k, v in env.items():
        clean_env.setenv(k, v)
    argv = ["--config", "fed_q4.yaml", *TINY_FED, f"output_dir={tmp_path / 'runs'}"] + ([override] if override else [])
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and key in err[0], err
    assert not (tmp_path / "runs").exists()


def test_online_without_an_api_key_runs_offline_with_one_line(clean_env, tmp_path, capsys):
    assert train_main(["--config", "fed_q4.yaml", *TINY_FED, f"output_dir={tmp_path / 'runs'}",
                       "logger.mode=online"]) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("W&B:")]
    assert len(said) == 1 and "no W&B API key" in said[0] and "offline" in said[0], err
    assert "Traceback" not in err
    (run,) = offline_runs(tmp_path / "runs")
    assert run_record(run).run_id == (run.parent.parent / "wandb_id.txt").read_text().strip()


def test_online_without_a_reachable_server_falls_back_at_once(clean_env, capsys):
    clean_env.setenv("WANDB_API_KEY", "x" * 40)
    clean_env.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there: refused at once
    start = time.perf_counter()
    t = resolve_logger(LoggerConfig(mode="online"))
    assert t.mode == "offline" and time.perf_counter() - start < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the W&B server 127.0.0.1:9" in err[0], err


@pytest.mark.usefixtures("one_torch_thread")
def test_a_study_shares_one_group_and_artifacts_carry_the_lineage(clean_env, make_cfg, tmp_path, monkeypatch):
    from ggl.jobs.federation import run_federation
    from ggl.report.build import write_report

    clean_env.setenv("WANDB_MODE", "offline")
    fed = run_federation(make_cfg("model.name=lenet", "fl.rounds=1", "audit.rounds=[0]", "audit.num_images=2",
                                  "logger.mode=null", config="fed_q4.yaml"))
    fed_dir = Path(fed["run_dir"])
    (fed_run,) = offline_runs(fed_dir)
    rec = run_record(fed_run)
    assert rec.run_group == "fed_q4" and {"defense:q4", "round:0"} <= set(rec.tags)
    (captures,) = [a for a in artifacts(fed_run) if a[0] == "captures"]
    assert captures[2] is False  # logged (an output) by the federation

    monkeypatch.setattr("ggl.jobs.attack.load_attack_prior", lambda path, *_: TinyPrior())
    assert attack_main([f"output_dir={tmp_path / 'runs'}", f"attack.source={fed_dir}", "name=atk",
                        "attack.optimizer=cmaes", "attack.generations=2", "attack.population=6",
                        "attack.progress=false"]) == 0
    atk_dir = (tmp_path / "runs" / "atk" / "latest").resolve()
    (atk_run,) = offline_runs(atk_dir)
    rec = run_record(atk_run)
    assert rec.run_group == "fed_q4"  # the federation's group: one study
    assert {"defense:q4", "attacker:ggl-l2", "round:0"} <= set(rec.tags)
    arts = {a[0]: a for a in artifacts(atk_run)}
    assert arts["captures"][1:] == (captures[1], True, captures[3])  # the same captures, declared an input
    assert arts["model"][1] == prior_artifact_name(Path("checkpoints/gan_mnist5k.pt")) and arts["model"][2] is True
    assert arts["attack"][2] is False

    out = tmp_path / "report"
    write_report([tmp_path / "runs"], out, wandb_mode="offline")
    (rep_run,) = offline_runs(out)
    rep = {a[0]: a for a in artifacts(rep_run)}
    assert rep["attack"][1:] == (arts["attack"][1], True, arts["attack"][3])  # the attack's images, an input
    assert rep["report"][2] is False
    (table,) = tables(rep_run, "privacy_utility/per_image")
    cols = table["columns"]
    assert {"psnr", "ssim", "original", "reconstruction"} <= set(cols) and len(table["data"]) == 2
    for row in table["data"]:
        assert isinstance(row[cols.index("psnr")], float) and isinstance(row[cols.index("round")], int)
        for col in ("original", "reconstruction"):
            assert row[cols.index(col)]["_type"] == "image-file" and row[cols.index(col)]["path"] in table["media"]


def test_prior_artifact_names_match_between_the_gan_run_and_the_attack():
    assert prior_artifact_name(Path("runs/gan_mnist/20260101-000000/prior.pt")) == "prior-gan_mnist-20260101-000000"
    assert prior_artifact_name(Path("/x/checkpoints/gan_mnist5k.pt")) == "prior-gan_mnist5k"


def test_a_resumed_run_leaves_time_ordered_pieces_of_one_wandb_run(clean_env, make_cfg):
    """What the README's `wandb sync <run>/wandb` relies on: one id, folder names in start-time order."""
    from ggl.jobs.federation import run_federation

    first = run_federation(make_cfg("fl.rounds=1", "logger.mode=offline"))
    run_federation(make_cfg("fl.rounds=2", "logger.mode=offline", f"resume={first['run_dir']}"))
    pieces = offline_runs(Path(first["run_dir"]) / "wandb")
    assert len(pieces) == 2
    runs = [run_record(p) for p in pieces]
    assert runs[0].run_id == runs[1].run_id == (Path(first["run_dir"]) / "wandb_id.txt").read_text().strip()
    assert runs[0].start_time.ToMicroseconds() < runs[1].start_time.ToMicroseconds()


def test_the_gan_run_logs_its_prior_as_a_model_artifact(clean_env, tmp_path):
    from ggl.config import load_config
    from ggl.jobs.gan import run_gan

    res = run_gan(load_config("gan_mnist.yaml", [
        f"output_dir={tmp_path}", "data.name=digits", "gan.g_width=16", "gan.d_width=16", "gan.classifier_epochs=1",
        "gan.quality_every=0", "gan.eval_samples=200", "gan.bn_recalibration=2", "gan.sample_every=1",
        "logger.mode=offline", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "gan.max_steps=4"]))
    run_dir = Path(res["run_dir"])
    (run,) = offline_runs(run_dir)
    assert run_record(run).run_group == "gan"
    (model,) = [a for a in artifacts(run) if a[0] == "model"]
    assert model[1] == prior_artifact_name(run_dir / "prior.pt") and model[2] is False
