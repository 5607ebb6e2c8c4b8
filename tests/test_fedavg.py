"""The federation end to end on `digits`: learning, defences in the chain, rejection, outputs."""
import json
from pathlib import Path

import torch

from ggl.fl.callbacks import UpdateTransform
from ggl.jobs.federation import run_federation


def _weights(run_dir) -> dict:
    ckpt = torch.load(Path(run_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    return ckpt["state_dict"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Poison(UpdateTransform):
    """Turns the updates of some clients into NaN, as a broken client would."""

    def __init__(self, clients=None):
        super().__init__()
        self.clients = clients

    def on_client_update(self, trainer, module, update):
        if self.clients is None or update.client_id in self.clients:
            return update.with_tensors([torch.full_like(t, float("nan")) for t in update.tensors])
        return update


def test_two_rounds_learn_above_chance_and_write_results(make_cfg):
    res = run_federation(make_cfg())
    assert res["final"]["test_acc"] > 0.5  # 10 classes: chance is 0.1
    saved = json.loads((Path(res["run_dir"]) / "results.json").read_text())
    assert set(saved) >= {"config", "final", "history", "wall_seconds"}
    assert set(saved["final"]) >= {"test_acc", "test_loss", "rounds", "uplink_bits_per_round", "compression_ratio"}
    assert saved["final"]["rounds"] == 2
    assert [h["round"] for h in saved["history"]] == [1, 2]
    assert all(set(h) == {"round", "test_acc", "test_loss"} for h in saved["history"])
    assert saved["config"]["fl"]["rounds"] == 2 and saved["config"]["data"]["name"] == "digits"
    run_dir = Path(res["run_dir"])
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir.parent / "latest").resolve() == run_dir.resolve()


def test_same_seed_same_model_and_reruns_never_overwrite(make_cfg):
    a = run_federation(make_cfg("fl.rounds=1"))
    b = run_federation(make_cfg("fl.rounds=1"))
    assert a["run_dir"] != b["run_dir"]
    assert Path(a["run_dir"], "results.json").is_file()
    assert _same(_weights(a["run_dir"]), _weights(b["run_dir"]))
    c = run_federation(make_cfg("fl.rounds=1", "seed=1"))
    assert not _same(_weights(a["run_dir"]), _weights(c["run_dir"]))


def test_identity_callback_changes_nothing(make_cfg):
    plain = run_federation(make_cfg("fl.rounds=1"))
    ident = run_federation(make_cfg("fl.rounds=1", "defenses=[{name: identity}]"))
    assert _same(_weights(plain["run_dir"]), _weights(ident["run_dir"]))


def test_quantized_run_sends_fewer_bits_and_still_learns(make_cfg):
    fp = run_federation(make_cfg("fl.rounds=1"))
    q4 = run_federation(make_cfg("fl.rounds=1", config="fed_q4.yaml"))
    assert q4["final"]["uplink_bits_per_round"] <= fp["final"]["uplink_bits_per_round"] / 7
    assert q4["final"]["compression_ratio"] > 7.0
    assert not _same(_weights(fp["run_dir"]), _weights(q4["run_dir"]))  # the defence was applied


def test_non_finite_update_is_rejected_and_counted(make_cfg):
    start = run_federation(make_cfg("fl.rounds=1"), extra_callbacks=[_Poison()])
    # every update rejected: the global model is still the seeded initial model
    from ggl.models import build_model
    init = {f"model.{k}": v for k, v in build_model("cnn", 1, 10, seed=0).state_dict().items()}
    assert _same(_weights(start["run_dir"]), init)
    assert start["final"]["rejected_updates"] == 4

    one_bad = run_federation(make_cfg("fl.rounds=2"), extra_callbacks=[_Poison(clients={3})])
    w = _weights(one_bad["run_dir"])
    assert all(torch.isfinite(t).all() for t in w.values())
    assert one_bad["final"]["rejected_updates"] == 2
    assert one_bad["final"]["test_acc"] > 0.5


def test_offline_wandb_run_directory_is_created(make_cfg):
    res = run_federation(make_cfg("fl.rounds=1", "logger.mode=offline"))
    runs = list((Path(res["run_dir"]) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    run_id = (Path(res["run_dir"]) / "wandb_id.txt").read_text().strip()
    assert runs[0].name.endswith(run_id)


def test_failing_clients_are_dropped_and_counted(make_cfg):
    res = run_federation(make_cfg("fl.rounds=2", "fl.simulate_failures=[1]"))
    assert res["final"]["failed_clients"] == 2  # client 1 is sampled (and fails) in both rounds
    assert res["final"]["test_acc"] > 0.5       # the others still trained the model
    all_fail = run_federation(make_cfg("fl.rounds=1", "fl.simulate_failures=[0, 1, 2, 3]"))
    from ggl.models import build_model
    init = {f"model.{k}": v for k, v in build_model("cnn", 1, 10, seed=0).state_dict().items()}
    assert _same(_weights(all_fail["run_dir"]), init)


def test_partition_histogram_is_written(make_cfg):
    res = run_federation(make_cfg("fl.rounds=1", "data.partition=shards", "data.classes_per_client=2",
                                  "data.num_clients=5"))
    saved = json.loads((Path(res["run_dir"]) / "label_histogram.json").read_text())
    counts = saved["counts"]
    assert saved["partition"] == "shards" and len(counts) == 5 and len(counts[0]) == 10
    # 10 label-sorted shards of ~1 class each, 2 per client: two classes hold almost all of a client's data
    assert all(sum(sorted(row)[-2:]) >= 0.9 * sum(row) for row in counts)
    assert (Path(res["run_dir"]) / "label_histogram.png").stat().st_size > 1000
