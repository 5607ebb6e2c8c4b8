"""audit.probe: the single-image FedSGD gradient vs the multi-step local update a client really sends;
the attacker can replay either; a probe batch larger than the victim's data is a one-line error."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _attack_fixtures import one_torch_thread  # noqa: F401
from ggl.core.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fresh(make_cfg, tmp_path, probe, local_steps=None, batch=4):
    from ggl.attack.observation import Observation
    from ggl.jobs.attack import defense_settings
    from ggl.audit.victim import fresh_captures

    cfg = make_cfg(f"audit.num_images={batch}", f"audit.batch_size={batch}", "model.name=lenet", "model.init=dlg",
                   "fl.local_steps=3", "fl.momentum=0.9", config="attack.yaml")
    cfg.audit.probe, cfg.audit.local_steps = probe, local_steps  # keys read with a default until the schema has them
    caps = fresh_captures(cfg, defense_settings(cfg)[:1], tmp_path / f"caps-{probe}")
    (obs_path, truth_path), = next(iter(caps.values()))
    return cfg, Observation.load(obs_path), truth_path


def test_local_update_probe_sends_the_multi_step_delta_and_the_attacker_replays_it(make_cfg, tmp_path):
    from ggl.attack.trial import ClientSimulator
    from ggl.audit.truth import GroundTruth
    from ggl.audit.victim import probe_kind
    from ggl.data.datamodule import load_split

    cfg, obs, truth_path = _fresh(make_cfg, tmp_path, "local_update", local_steps=4)
    assert (obs.kind, obs.local_steps, obs.batch_size, obs.momentum) == ("delta", 4, 4, 0.9)
    assert probe_kind(obs) == "local_update"
    # what the attacker replays at the victim's true images (the evaluator's knowledge) is what was sent
    gt = GroundTruth.load(truth_path)
    images = load_split(cfg.data)[0].images[gt.indices]
    replay = ClientSimulator(obs.build_model(), obs).update(images, gt.labels)
    for r, sent in zip(replay, obs.update):
        torch.testing.assert_close(r, sent, rtol=1e-4, atol=1e-4 * float(sent.abs().max()))


def test_fedsgd_probe_is_one_gradient_whatever_the_local_protocol(make_cfg, tmp_path):
    from ggl.audit.victim import probe_kind

    _, obs, _ = _fresh(make_cfg, tmp_path, "fedsgd")
    assert (obs.kind, obs.local_steps, obs.batch_size) == ("gradient", 1, 4)
    assert probe_kind(obs) == "fedsgd"
    _, legacy, _ = _fresh(make_cfg, tmp_path, None)  # unset: the fl protocol as configured (3 steps)
    assert (legacy.kind, legacy.local_steps) == ("delta", 3)


@pytest.mark.parametrize("audit,needle", [
    ({"probe": "local"}, "'audit.probe' = 'local' is not one of fedsgd, local_update"),
    ({"probe": "local_update", "local_steps": 1}, "'audit.local_steps' = 1"),
])
def test_bad_probe_keys_are_one_line_errors(audit, needle):
    from ggl.audit.schema import AuditConfig

    with pytest.raises(ConfigError) as err:
        AuditConfig(**audit).probe_steps()
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert AuditConfig(probe="local_update").probe_steps() == 5
    assert AuditConfig(probe="fedsgd").probe_steps() == 1
    assert AuditConfig().probe_steps() is None


def test_a_probe_batch_larger_than_the_victims_data_names_both_numbers(tmp_path, capsys):
    from ggl.cli import train_main

    code = train_main(["--config", "fed_fp32.yaml", f"output_dir={tmp_path}", "logger.mode=disabled", "data.name=digits",
                       "data.num_clients=4", "fl.rounds=1", "trainer.accelerator=cpu", "audit.rounds=[0]",
                       "audit.num_images=400", "audit.batch_size=400", "trainer.enable_progress_bar=false"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert "'audit.batch_size' = 400" in err and "victim client 0" in err
    own = int(err.split("exceeds the ")[1].split()[0])
    assert 0 < own < 400


def test_a_federation_captures_the_local_update_probe_at_its_global_model(make_cfg):
    from ggl.attack.observation import Observation
    from ggl.audit.truth import find_captures
    from ggl.audit.victim import probe_kind
    from ggl.jobs.federation import run_federation

    cfg = make_cfg("fl.rounds=1", "audit.rounds=[0]", "audit.num_images=4", "audit.batch_size=4",
                   "fl.local_steps=1")
    cfg.audit.probe, cfg.audit.local_steps = "local_update", 3
    out = run_federation(cfg)
    caps = find_captures(Path(out["run_dir"]) / "audit")
    (obs_path, _), = caps["fp32"]
    obs = Observation.load(obs_path)
    # the federation itself sends one-step gradients; the probe is the client's 3-step local update
    assert (obs.kind, obs.local_steps, obs.batch_size, probe_kind(obs)) == ("delta", 3, 4, "local_update")
