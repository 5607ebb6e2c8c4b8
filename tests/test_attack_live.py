"""The attack's W&B run opens before its search and streams the loss, progress and best image during it;
its config names the setting's real defence chain."""
from __future__ import annotations

import pytest

from _attack_fixtures import TinyPrior, one_torch_thread  # noqa: F401
from ggl.cli import attack_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FakeRun:
    def __init__(self, events, config):
        self.events, self.config, self.summary = events, config, {}

    def define_metric(self, *a, **k):
        pass

    def log(self, row, step=None):
        self.events.append(("log", dict(row)))

    def finish(self, exit_code=0):
        self.events.append(("finish", self.config["setting"]))

    def log_artifact(self, art):
        self.events.append(("artifact", art.type))

    def _log_artifact(self, art, **kw):  # what ggl.runs.artifacts.use_input calls for an offline run
        self.events.append(("use", art.type))

    class settings:
        _offline = True


def test_the_run_opens_before_the_search_and_streams_during_it(tmp_path, monkeypatch):
    import wandb

    import ggl.jobs.attack as run_mod

    events, runs = [], []

    def fake_init(**kw):
        events.append(("init", kw["config"]["setting"]))
        runs.append(FakeRun(events, kw["config"]))
        return runs[-1]

    real_attack = run_mod.attack

    def traced_attack(*a, **kw):
        events.append(("search-start", None))
        out = real_attack(*a, **kw)
        events.append(("search-end", None))
        return out

    monkeypatch.setattr(wandb, "init", fake_init)
    monkeypatch.setattr(run_mod, "attack", traced_attack)
    monkeypatch.setattr(run_mod, "load_attack_prior", lambda path, *_: TinyPrior())
    args = [f"output_dir={tmp_path / 'runs'}", "logger.mode=offline", "data.name=digits", "audit.num_images=2",
            "attack.optimizer=cmaes_adam", "attack.generations=4", "attack.adam_steps=3", "attack.adam_restarts=2",
            "attack.population=6", "attack.progress=false", "attack.image_every=2"]
    assert attack_main(args) == 0

    assert [r.config["setting"] for r in runs] == ["fp32", "q4"]
    assert runs[0].config["defenses"] == []
    assert runs[1].config["defenses"][0]["name"] == "quantize" and runs[1].config["defenses"][0]["bits"] == 4
    kinds = [k for k, _ in events]
    first_search = kinds.index("search-start")
    assert kinds.index("init") < first_search  # the run is open before the search starts
    # loss entries arrive between a search's start and its end, one per generation / Adam step
    inside, during = [], False
    for kind, row in events:
        if kind in ("search-start", "search-end"):
            during = kind == "search-start"
        elif kind == "log" and during:
            inside.append(row)
    assert len(inside) == 2 * 2 * (4 + 3)  # 2 settings x 2 images x (4 generations + 3 Adam steps)
    assert all("attack/best_loss" in r and "attack/progress" in r for r in inside)
    steps = [r["attack/step"] for r in inside[:14]]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # one setting's steps only grow
    assert inside[13]["attack/progress"] == 1.0
    losses = [r["attack/best_loss"] for r in inside[:7]]  # the first image: best so far never rises
    assert all(b <= a for a, b in zip(losses, losses[1:]))
    assert sum("attack/best_reconstruction" in r for r in inside[:7]) >= 3
    assert kinds.count("finish") == 2
