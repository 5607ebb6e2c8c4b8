"""Audit a Flower federation with ggl: 4-bit quantized updates (defense_mod) and GGL captures (capture_mod).

    python examples/flower_audit.py                         # 10 clients, 5 rounds, q4, captures at rounds 0 and 4
    python attack.py attack.source=runs/flower_q4/latest    # attack the captures (what the server saw)
    python -m ggl.report runs                               # privacy-utility report, beside ggl's own runs

A Flower simulation (``flwr.simulation.run_simulation``, one SuperNode per client) on ggl's embedded MNIST
(``data.name: mnist5k``), dealt to the clients exactly as ``python train.py`` deals it (same split, partition
and seed). Each client trains with ggl's own client code (``ggl.fl.client.train_client``: SGD with momentum
for ``--local-epochs`` over its images), ``defense_mod`` applies the ggl defence chain to its weight delta, and
``capture_mod`` writes the one-image FedSGD probe of the audit for the victim clients at the capture rounds
(``--probe sent`` instead captures what the client really sent). The server is Flower's stock ``FedAvg``;
the global model is evaluated on ggl's test split after every round. The run folder
``<out>/<name>/<timestamp>/`` holds ``results.json`` in ggl's federation format (so ``ggl.report`` pairs it
with its attacks) and ``audit/`` (observations and, separately, ground truth).

Bad input (a defence the mod cannot apply, an unknown model, ...) prints one line and exits with code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

from ggl.core.errors import UserError
from ggl.fl.client import local_step_count, train_client
from ggl.models import build_model
from ggl.core.seeding import STREAM_LOCAL_DATA, generator
from ggl.runs.folder import create_run_dir, point_latest
from ggl.runs.logger import write_json

EXIT_USER_ERROR = 2


def parse(argv=None):
    ap = argparse.ArgumentParser(prog="python examples/flower_audit.py", description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="flower_q4", help="run name: <out>/<name>/<timestamp>/")
    ap.add_argument("--out", default="runs", help="folder of runs")
    ap.add_argument("--clients", type=int, default=10, help="clients = Flower SuperNodes (all train every round)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="model init, partition, local shuffling, capture draws")
    ap.add_argument("--limit", type=int, default=None, help="data.limit: a stratified subset of the dataset")
    ap.add_argument("--dataset", default="mnist5k")
    ap.add_argument("--partition", default="iid", choices=("iid", "dirichlet", "shards"))
    ap.add_argument("--model", default="cnn", help="a ggl model name or your own as pkg.module:Class")
    ap.add_argument("--defense", default='[{"name": "quantize", "bits": 4}]',
                    help="the defence chain as JSON, ggl's `defenses:` entries ([] = none)")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--local-epochs", type=float, default=2.0)
    ap.add_argument("--capture-rounds", type=int, nargs="*", default=None,
                    help="ggl round numbers (r = the global model after r rounds); default: 0 and the last")
    ap.add_argument("--victims", type=int, nargs="*", default=[0], help="partition ids of the captured clients")
    ap.add_argument("--num-images", type=int, default=8, help="private images per victim and round (fedsgd probe)")
    ap.add_argument("--probe", default="fedsgd", choices=("fedsgd", "sent"))
    ap.add_argument("--cpus", type=int, default=max(1, min(2, os.cpu_count() or 1)),
                    help="CPUs for the simulation (Ray); each client uses one")
    return ap.parse_args(argv)


def build_apps(args, run_dir: Path, history: list, errors: list):
    """The ServerApp and the ClientApp of the run (Flower and ggl.flower are imported here: without Flower, run()
    says so in one line)."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg

    from ggl.flower import GGLPartition, capture_mod, client_id, defense_mod, raise_ggl_errors, server_round


    data_cfg = {"name": args.dataset, "num_clients": args.clients, "partition": args.partition, "limit": args.limit}
    part = GGLPartition(data_cfg, seed=args.seed)
    chain = json.loads(args.defense)
    channels, classes = part.channels, part.num_classes
    model0 = build_model(args.model, channels, classes, seed=args.seed)  # the initial model of python train.py
    params = [n for n, _ in model0.named_parameters()]
    seed, model_name = args.seed, args.model
    fl = {"lr": args.lr, "momentum": args.momentum, "weight_decay": 0.0, "batch_size": args.batch_size,
          "local_epochs": args.local_epochs}
    capture_rounds = args.capture_rounds if args.capture_rounds is not None else sorted({0, args.rounds - 1})
    defense = defense_mod(chain, seed=seed, params=params)
    capture = capture_mod(run_dir / "audit", clients=args.victims, rounds=capture_rounds, data=part, model=model_name,
                          channels=channels, num_classes=classes, num_images=args.num_images, batch_size=1,
                          probe=args.probe, defense=defense, seed=seed,
                          protocol={**fl, "local_steps": _local_steps(part, args)})

    client_app = ClientApp(mods=[capture, defense])  # capture outermost: it sees what defense_mod sends

    @client_app.train()
    def train(msg: Message, context):
        torch.set_num_threads(1)
        cid, rnd = client_id(context), server_round(msg) - 1
        shard = part(context)
        model = build_model(model_name, channels, classes)
        arrays = msg.content["arrays"]
        model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
        glob = {k: v.detach() for k, v in model.named_parameters()}
        update = train_client(model, glob, shard.images, shard.labels, client_id=cid, round=rnd, seed=seed,
                              lr=fl["lr"], momentum=fl["momentum"], weight_decay=fl["weight_decay"],
                              batch_size=fl["batch_size"], local_epochs=fl["local_epochs"],
                              data_gen=generator(seed, rnd, cid, STREAM_LOCAL_DATA))
        delta = dict(zip(update.names, update.tensors if update.kind == "delta"
                         else [-fl["lr"] * g for g in update.tensors]))
        state = {k: (v + delta[k] if k in delta else v) for k, v in model.state_dict().items()}
        content = RecordDict({"arrays": ArrayRecord(state),
                              "metrics": MetricRecord({"num-examples": int(update.num_samples)})})
        return Message(content=content, reply_to=msg)

    test_x, test_y = part.test_tensors()

    def evaluate(rnd: int, arrays: ArrayRecord):
        model = build_model(model_name, channels, classes)
        model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(test_x[i:i + 1000]) for i in range(0, len(test_y), 1000)])
        acc = float((logits.argmax(1) == test_y).float().mean())
        loss = float(torch.nn.functional.cross_entropy(logits, test_y))
        if rnd > 0:
            history.append({"round": int(rnd), "test_acc": acc, "test_loss": loss})
        return MetricRecord({"accuracy": acc, "loss": loss})

    class StrictFedAvg(FedAvg):
        """Flower's FedAvg; a reply carrying a ggl mod's error stops the run with that one line."""

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            try:
                raise_ggl_errors(replies)
            except UserError as exc:
                errors.append(str(exc))
                raise
            return super().aggregate_train(server_round, replies)

    server_app = ServerApp()

    @server_app.main()
    def main(grid, context):
        strategy = StrictFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=args.clients,
                                min_available_nodes=args.clients)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(model0.state_dict()), num_rounds=args.rounds,
                       train_config=ConfigRecord(), evaluate_fn=evaluate)

    config = {"task": "fedavg", "framework": "flower", "name": args.name, "seed": seed, "data": part.data_cfg,
              "model": {"name": model_name}, "fl": {**fl, "rounds": args.rounds, "clients_per_round": args.clients},
              "defenses": defense.spec_dicts,
              "audit": {"rounds": capture_rounds, "victim_clients": args.victims, "num_images": args.num_images,
                        "batch_size": 1, "probe": args.probe}}
    return server_app, client_app, config, defense


def _local_steps(part, args) -> int:
    """ggl.fl.client.local_step_count for the victim's shard (the protocol's public metadata)."""
    n = len(part.shard(args.victims[0]).labels) if args.victims else args.batch_size
    return local_step_count(n, args.batch_size, args.local_epochs, None)


def run(args) -> Path:
    import logging

    if args.clients < 2:
        raise UserError(f"--clients = {args.clients}: a federation needs >= 2 clients")
    try:
        from flwr.simulation import run_simulation
    except ImportError as exc:
        raise UserError(f"Flower is not installed ({exc}); pip install 'ggl[flower]'") from None
    try:
        json.loads(args.defense)
    except json.JSONDecodeError as exc:
        raise UserError(f"--defense is not JSON ({exc})") from None
    clock = time.perf_counter()
    run_dir = create_run_dir(args.out, args.name)
    history, errors = [], []
    try:
        server_app, client_app, config, defense = build_apps(args, run_dir, history, errors)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    logging.getLogger("flwr").setLevel(logging.ERROR)  # Flower's deprecation notice of run_simulation, etc.
    warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
    try:
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=args.clients,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"num_cpus": args.cpus, "include_dashboard": False,
                                                     "log_to_driver": False}})
    except Exception as exc:  # the ServerApp's exception comes back wrapped or as is
        if errors or isinstance(exc, UserError):  # a failed run leaves no half-written run folder
            shutil.rmtree(run_dir, ignore_errors=True)
            raise UserError(errors[0] if errors else str(exc)) from None
        raise
    if errors:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise UserError(errors[0])
    if len(history) != args.rounds:
        raise RuntimeError(f"the simulation ended after {len(history)} of {args.rounds} rounds (see Flower's log)")
    last = history[-1]
    results = {"config": config,
               "final": {"test_acc": last["test_acc"], "test_loss": last["test_loss"], "rounds": args.rounds,
                         "uplink_bits_per_round": None, "compression_ratio": None, "rejected_updates": 0,
                         "rejected_aggregates": 0, "failed_clients": 0, "privacy": None},
               "history": history, "wall_seconds": time.perf_counter() - clock}
    write_json(run_dir / "results.json", results)
    point_latest(run_dir)
    caps = sorted((run_dir / "audit" / "observations").rglob("*.pt"))
    print(f"test accuracy after {args.rounds} rounds: {last['test_acc']:.4f}; {len(caps)} captures "
          f"({defense.label}) in {run_dir / 'audit'}")
    print(f"next: python attack.py attack.source={run_dir} && python -m ggl.report {args.out}")
    return run_dir


def main(argv=None) -> int:
    args = parse(argv)
    try:
        run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
