"""ggl.flower: the Flower client mods apply ggl's defences bit for bit and write captures attack.py reads;
a user model given by dotted path; the tiny end-to-end Flower simulation -> attack.py -> ggl.report.

Skipped without Flower (``pip install "ggl[flower]"``; the dev extra installs it, so CI runs them)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr", reason="Flower is not installed: pip install 'ggl[flower]' (the dev extra has it)")

from flwr.app import (ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, MetricRecord,  # noqa: E402
                      RecordDict)

from ggl.attack.observation import Observation  # noqa: E402
from ggl.audit.schema import AuditConfig  # noqa: E402
from ggl.audit.truth import GroundTruth, find_captures  # noqa: E402
from ggl.audit.victim import observation_from_update, probe_update  # noqa: E402
from ggl.cli import attack_main  # noqa: E402
from ggl.core.errors import ConfigError, UserError  # noqa: E402
from ggl.fl.callbacks import apply_defenses, build_defense_callbacks  # noqa: E402
from ggl.fl.schema import FLConfig  # noqa: E402
from ggl.fl.update import ClientUpdate  # noqa: E402
from ggl.flower import ClientShard, capture_mod, defense_mod, raise_ggl_errors  # noqa: E402
from ggl.flower.mods import SENT_KEY, WANT_SENT_KEY  # noqa: E402
from ggl.models import build_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

CHAINS = {
    "q4": [{"name": "quantize", "bits": 4}],
    "q4-stochastic": [{"name": "quantize", "bits": 4, "rounding": "stochastic"}],
    "clip+noise": [{"name": "clip", "max_norm": 0.05}, {"name": "noise", "std": 0.01}],
    "topk-error-feedback": [{"name": "topk", "fraction": 0.05, "error_feedback": True}],
}


def _msg(content: RecordDict, message_type: str = MessageType.TRAIN) -> Message:
    """A message as a SuperNode hands it to the ClientApp (its metadata set by the SuperLink)."""
    meta = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=7, reply_to_message_id="", group_id="1",
                    created_at=time.time(), ttl=3600.0, message_type=message_type)
    return Message(content=content, metadata=meta)


def _train_msg(state: dict, server_round: int) -> Message:
    return _msg(RecordDict({"arrays": ArrayRecord(state), "config": ConfigRecord({"server-round": server_round})}))


def _context(pid: int) -> Context:
    return Context(run_id=1, node_id=1000 + pid, node_config={"partition-id": pid}, state=RecordDict(), run_config={})


def _reply_with(local: dict, n: int = 20):
    def call_next(msg, context):
        return Message(RecordDict({"arrays": ArrayRecord(local), "metrics": MetricRecord({"num-examples": n})}),
                       reply_to=msg)
    return call_next


def _arrays(msg: Message) -> dict:
    rec = next(iter(msg.content.array_records.values()))
    return {k: torch.from_numpy(a.numpy().copy()) for k, a in rec.items()}


# ------------------------------------------------------------------------------- defense_mod == ggl's defence

@pytest.mark.parametrize("name", list(CHAINS))
def test_defense_mod_sends_exactly_what_ggls_federation_sends(name):
    """Two rounds of one client: the mod's defended delta equals, bit for bit, ggl's own chain of
    DefenseCallbacks (what FedAvgModule applies) on the same tensors, round, client id and seed, state
    (error feedback) included; the weights sent are global + that delta."""
    chain, seed, pid = CHAINS[name], 3, 4
    model = build_model("cnn", 1, 10, seed=0)
    names = [n for n, _ in model.named_parameters()]
    mod = defense_mod(chain, seed=seed)
    callbacks = build_defense_callbacks(mod.specs)
    context = _context(pid)
    gen = torch.Generator().manual_seed(1)
    glob = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for server_round in (1, 2):
        local = {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in glob.items()}
        context.state[WANT_SENT_KEY] = ConfigRecord({"round": server_round - 1})
        reply = mod(_train_msg(glob, server_round), context, _reply_with(local))
        assert not reply.has_error(), reply.error
        delta = [local[k] - glob[k] for k in names]
        update = ClientUpdate(client_id=pid, round=server_round - 1, tensors=delta, names=names, num_samples=20,
                              kind="delta", bits=32 * sum(t.numel() for t in delta), seed=seed)
        for cb in callbacks:
            cb.on_train_batch_start(None, None, None, 0)  # inside a training round: state is kept
        want = apply_defenses(callbacks, None, None, update)
        sent = {k: torch.from_numpy(a.numpy().copy()) for k, a in context.state.array_records[SENT_KEY].items()}
        out = _arrays(reply)
        for k, t in zip(names, want.tensors):
            assert torch.equal(sent[k], t), (name, server_round, k)
            assert torch.equal(out[k], glob[k] + t), (name, server_round, k)
        glob = out  # the next round's global model (one client: FedAvg's mean is its own weights)


def test_defense_mod_passes_other_messages_and_its_errors_are_one_ggl_line():
    mod = defense_mod(CHAINS["q4"])
    ctx = _context(0)
    # no parameters in the train message
    msg = _msg(RecordDict({"config": ConfigRecord({"server-round": 1})}))
    reply = mod(msg, ctx, lambda m, c: pytest.fail("the ClientApp must not run"))
    assert reply.has_error() and reply.error.reason.startswith("ggl: defense_mod: the train message carries no "
                                                               "parameters") and "\n" not in reply.error.reason
    with pytest.raises(UserError, match="no parameters"):
        raise_ggl_errors([reply])
    # an array the defence cannot take
    glob = {"w": torch.zeros(3, 3), "steps": torch.zeros(1, dtype=torch.int64)}
    local = {"w": torch.ones(3, 3), "steps": torch.ones(1, dtype=torch.int64)}
    reply = mod(_train_msg(glob, 1), ctx, _reply_with(local))
    assert reply.has_error() and "cannot be applied to array 'steps' of dtype int64" in reply.error.reason
    # ... which the parameter names leave alone (a buffer passes through unchanged)
    reply = defense_mod(CHAINS["q4"], params=["w"])(_train_msg(glob, 1), ctx, _reply_with(local))
    assert not reply.has_error() and torch.equal(_arrays(reply)["steps"], local["steps"])
    # evaluate messages pass untouched
    ev = _msg(RecordDict({"arrays": ArrayRecord(glob)}), MessageType.EVALUATE)
    assert mod(ev, ctx, lambda m, c: "untouched") == "untouched"


# ------------------------------------------------------------------------------- captures

def test_observation_from_update_round_trips_and_refuses_bad_fields(tmp_path):
    model = build_model("lenet", 1, 10, seed=0)
    sent = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    obs = Observation.from_update(model, model.state_dict(), sent, [{"name": "quantize", "bits": 4}], probe="fedsgd",
                                  batch_size=1, lr=0.1, round=3, client_id=5, bits=123, obs_id="x")
    back = Observation.load(obs.save(tmp_path / "o.pt"))
    assert (back.arch, back.kind, back.local_steps, back.round, back.client_id, back.bits) == \
           ("lenet", "gradient", 1, 3, 5, 123)
    assert back.defenses == [{"name": "quantize", "bits": 4, "rounding": "nearest", "range": "global",
                              "grid": "project"}]
    assert all(torch.equal(a, sent[n]) for n, a in zip(back.names, back.update))
    assert all(torch.equal(back.state[k], v) for k, v in model.state_dict().items())
    back.build_model()
    with pytest.raises(UserError, match="lacks parameter"):
        Observation.from_update(model, model.state_dict(), dict(list(sent.items())[:-1]), batch_size=1, lr=0.1)
    with pytest.raises(UserError, match="local_steps"):
        Observation.from_update(model, model.state_dict(), sent, probe="local_update", batch_size=1, lr=0.1)


def test_capture_mod_fedsgd_probe_is_ggls_audit_probe(tmp_path):
    """The capture of a Flower client at ggl round 2 holds what ggl's audit computes for that client (same
    drawn images, same gradient, same defence, bit for bit), and its ground truth sits in its own folder."""
    seed, pid, rnd = 0, 2, 2
    model = build_model("cnn", 1, 10, seed=5)
    images = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([3, 1, 4, 1, 5, 9])
    indices = torch.arange(100, 106)
    dataset = {"name": "mnist5k"}
    chain = CHAINS["q4"]
    defense = defense_mod(chain, seed=seed)
    protocol = {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "batch_size": 32}
    capture = capture_mod(tmp_path, clients=[pid], rounds=[rnd], data=lambda ctx: ClientShard(images, labels, indices,
                          dataset), model="cnn", num_images=2, defense=defense, seed=seed, protocol=protocol)
    glob = model.state_dict()
    ran = []
    reply = capture(_train_msg(glob, rnd + 1), _context(pid), lambda m, c: ran.append(1) or "the app's reply")
    assert reply == "the app's reply" and ran == [1]
    caps = find_captures(tmp_path)
    assert list(caps) == ["q4"] and len(caps["q4"]) == 2
    from ggl.audit.victim import draw_private

    picked = draw_private(indices, 2, seed, rnd, pid)  # what ggl's AuditCapture draws from the client's indices
    params = {k: v.detach() for k, v in model.named_parameters()}
    for k, (obs_path, truth_path) in enumerate(caps["q4"]):
        obs, truth = Observation.load(obs_path), GroundTruth.load(truth_path)
        pos = (indices[:, None] == picked[k:k + 1][None]).nonzero()[:, 0]
        upd = probe_update(model, params, images[pos], labels[pos], audit=AuditConfig(probe="fedsgd"),
                           fl=FLConfig(local_epochs=1.0, **protocol), client_id=pid, round=rnd, seed=seed)
        sent = apply_defenses(build_defense_callbacks(defense.specs), None, None, upd)
        want = observation_from_update("cnn", model, sent, channels=1, num_classes=10, fl=FLConfig(**protocol),
                                       defenses=defense.specs, obs_id=obs.obs_id)
        for field in ("arch", "kind", "batch_size", "local_steps", "lr", "momentum", "round", "client_id", "bits",
                      "defenses", "names"):
            assert getattr(obs, field) == getattr(want, field), field
        assert all(torch.equal(a, b) for a, b in zip(obs.update, want.update))
        assert torch.equal(truth.indices, picked[k:k + 1]) and truth.dataset == dataset
        assert truth_path.parent.name == "ground_truth" and obs_path.parent.parent.name == "observations"
        blob = torch.load(obs_path, weights_only=True)
        assert not {"indices", "labels", "images", "dataset"} & set(blob)  # nothing private reaches the attacker
    # other rounds and clients pass through without a capture
    capture(_train_msg(glob, rnd + 2), _context(pid), lambda m, c: "r")
    capture(_train_msg(glob, rnd + 1), _context(pid + 1), lambda m, c: "r")
    assert len(find_captures(tmp_path)["q4"]) == 2


def test_capture_mod_sent_probe_records_the_defended_delta_exactly(tmp_path):
    model = build_model("lenet", 1, 10, seed=0)
    glob = {k: v.detach().clone() for k, v in model.state_dict().items()}
    local = {k: v + 0.01 * torch.randn_like(v) for k, v in glob.items()}
    defense = defense_mod(CHAINS["q4"])
    shard = ClientShard(torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3]), torch.arange(4), {"name": "mnist5k"})
    capture = capture_mod(tmp_path, clients=[0], rounds=[0], data=lambda c: shard, model="lenet", defense=defense,
                          probe="sent", protocol={"lr": 0.1, "local_steps": 2, "batch_size": 2})
    ctx = _context(0)
    reply = capture(_train_msg(glob, 1), ctx, lambda m, c: defense(m, c, _reply_with(local, n=4)))
    assert not reply.has_error(), reply.error
    (obs_path, truth_path), = find_captures(tmp_path)["q4"]
    obs = Observation.load(obs_path)
    out = _arrays(reply)
    assert obs.kind == "delta" and obs.local_steps == 2 and obs.batch_size == 4
    for n, t in zip(obs.names, obs.update):
        assert torch.equal(glob[n] + t, out[n])  # exactly the delta defense_mod added to the global weights
    assert torch.equal(GroundTruth.load(truth_path).indices, torch.arange(4))
    assert SENT_KEY not in ctx.state and WANT_SENT_KEY not in ctx.state  # nothing kept on the node
    # the wrong order (capture inside the defence) is an error, not a silently undefended capture
    wrong = capture_mod(tmp_path / "w", clients=[0], rounds=[0], data=lambda c: shard, model="lenet", defense=defense,
                        probe="sent", protocol={"lr": 0.1, "local_steps": 2})
    reply = wrong(_train_msg(glob, 1), _context(0), _reply_with(local))
    assert reply.has_error() and "mods=[capture, defense]" in reply.error.reason


# ------------------------------------------------------------------------------- a user model by dotted path

@pytest.mark.parametrize("name, fast", [("_user_model:PlainNet", True), ("_user_model:make_tied", False)])
def test_user_model_by_dotted_path_is_attacked_with_the_fast_path_or_vmap(name, fast, tmp_path):
    from ggl.attack import attack
    from ggl.attack.schema import AttackConfig
    from ggl.attack.trial import ClientSimulator
    from _attack_fixtures import TinyPrior

    torch.set_num_threads(1)
    model = build_model(name, 1, 10, seed=0)
    x, y = torch.rand(1, 1, 32, 32), torch.tensor([7])
    grads = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), list(model.parameters()))
    obs = Observation.from_update(model, model.state_dict(), list(grads), [], arch=name, batch_size=1, lr=0.1)
    obs = Observation.load(obs.save(tmp_path / "o.pt"))
    with pytest.raises(ConfigError, match="not one of ggl's; it was not imported"):
        obs.build_model()
    rebuilt = obs.build_model(trusted=[name])
    sim = ClientSimulator(rebuilt, obs)
    cand = torch.rand(3, 1, 1, 32, 32)
    batched = sim.batched(cand, y)
    assert (sim._per_candidate is not None) == fast  # the tied net's forward reuses a layer: vmap from then on
    for p in range(3):
        ref = sim.reference(cand[p], y)
        assert all(torch.allclose(a[p], b, atol=1e-6) for a, b in zip(batched, ref))
    res = attack(obs, TinyPrior(), AttackConfig(optimizer="cmaes", population=6, generations=2, progress=False), 0,
                 model=rebuilt)
    assert res.images.shape == (1, 1, 32, 32) and torch.isfinite(res.images).all()


def test_attack_cli_refuses_a_capture_naming_an_untrusted_model(tmp_path, capsys):
    from ggl.audit.truth import capture_paths

    name = "_user_model:PlainNet"
    model = build_model(name, 1, 10, seed=0)
    grads = [torch.zeros_like(p) + 0.01 for p in model.parameters()]
    obs = Observation.from_update(model, model.state_dict(), grads, [], batch_size=1, lr=0.1, obs_id="r0000_b000")
    obs_path, truth_path = capture_paths(tmp_path / "caps", "fp32", "r0000_b000")
    obs.save(obs_path)
    args = [f"output_dir={tmp_path / 'runs'}", "logger.mode=disabled", f"attack.source={tmp_path / 'caps'}",
            "attack.optimizer=cmaes", "attack.generations=2", "attack.population=4", "attack.progress=false"]
    assert attack_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "_user_model:PlainNet" in err[0] and "attack.trusted_models" in err[0], err
    # trusted, but its module is gone on the attacker's side: one line, exit 2
    obs.arch = "_no_such_user_module:Net"
    obs.save(obs_path)
    assert attack_main(args + ["attack.trusted_models=[_no_such_user_module:Net]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be imported" in err[0], err


# ------------------------------------------------------------------------------- the example, end to end

def _run(cmd, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]),
           "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, *cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=900, **kw)


def test_example_bad_input_is_one_line_and_exit_2(tmp_path):
    res = _run(["examples/flower_audit.py", "--out", str(tmp_path), "--defense", '[{"name": "quantise"}]'])
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "did you mean 'quantize'" in lines[0], lines
    assert not (tmp_path / "flower_q4").exists() or not any((tmp_path / "flower_q4").iterdir())


def test_flower_simulation_captures_attack_and_report_end_to_end(tmp_path):
    """10 Flower SuperNodes, 2 rounds on a 500-image MNIST subset, q4 + one-image FedSGD captures of client 0
    at rounds 0 and 1; then attack.py on the run folder and ggl.report over both."""
    runs = tmp_path / "runs"
    res = _run(["examples/flower_audit.py", "--out", str(runs), "--name", "fl", "--clients", "10", "--rounds", "2",
                "--limit", "500", "--num-images", "1", "--local-epochs", "1", "--cpus", "2"])
    assert res.returncode == 0, res.stderr[-3000:]
    run = (runs / "fl" / "latest").resolve()
    fed = json.loads((run / "results.json").read_text())
    assert [h["round"] for h in fed["history"]] == [1, 2] and 0.0 <= fed["final"]["test_acc"] <= 1.0
    caps = find_captures(run / "audit")
    assert list(caps) == ["q4"] and [p.stem for p, _ in caps["q4"]] == ["r0000_c000_b000", "r0001_c000_b000"]
    assert Observation.load(caps["q4"][1][0]).round == 1
    res = _run(["attack.py", f"attack.source={run}", f"output_dir={runs}", "logger.mode=disabled",
                "attack.optimizer=cmaes", "attack.generations=2", "attack.population=6", "attack.progress=false"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "q4: PSNR" in res.stdout
    res = _run(["-m", "ggl.report", str(runs), "--out", str(tmp_path / "report")])
    assert res.returncode == 0, res.stderr[-3000:]
    table = (tmp_path / "report" / "privacy_utility.md").read_text()
    assert "| q4 | 0 | fedsgd |" in table and "| q4 | 1 | fedsgd |" in table
    assert "1 federation runs" in table  # the Flower run is paired with its attack
