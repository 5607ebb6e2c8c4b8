"""``AuditCapture``: the federation's audit callback (``audit.rounds`` in a fed_*.yaml).

At the start of each listed round (so at the global model of that round), the victim client
(``audit.victim_client``) draws ``audit.num_images`` of its own private images (seeded by the run
seed, the round and ``STREAM_AUDIT``), computes its update in batches of ``audit.batch_size`` with
the module's own client code, passes it through the run's own defence chain, and the run saves each
``Observation`` and its ``GroundTruth`` separately under ``<run>/audit/`` (``ggl.audit.victim.capture``).
``audit.probe`` picks what the update is (fedsgd, local_update, or null = the federation's own protocol).
Capturing draws no global randomness, so a run with captures trains exactly as one without. Only rank 0
computes and writes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

from lightning.pytorch.callbacks import Callback

from ggl.audit.schema import AuditConfig
from ggl.audit.truth import GroundTruth
from ggl.audit.victim import capture, check_probe_fits, draw_private, probe_update
from ggl.core.errors import ConfigError
from ggl.defenses import defenses_label

AUDIT_DIR = "audit"


class AuditCapture(Callback):
    def __init__(self, run_dir: Path, audit_cfg: AuditConfig, data_cfg: Dict, model_name: str, defenses, seed: int):
        self.root = Path(run_dir) / AUDIT_DIR
        self.rounds = sorted(set(int(r) for r in audit_cfg.rounds))
        self.num_images = int(audit_cfg.num_images)
        self.batch_size = int(audit_cfg.batch_size)
        self.victim = int(audit_cfg.victim_client)
        self.audit = audit_cfg
        audit_cfg.probe_steps()  # checked
        self.data_cfg = data_cfg
        self.model_name = model_name
        self.defenses = list(defenses)
        self.label = defenses_label(self.defenses)
        self.seed = seed

    def on_fit_start(self, trainer, module) -> None:
        dm = trainer.datamodule
        if self.victim >= dm.num_clients:
            raise ConfigError(f"config key 'audit.victim_client' = {self.victim} must be < data.num_clients "
                              f"= {dm.num_clients}")
        check_probe_fits(self.batch_size, len(dm.client_indices[self.victim]), self.victim)

    def on_train_epoch_start(self, trainer, module) -> None:
        rnd = int(module.current_epoch)
        if rnd not in self.rounds or not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        own = dm.client_indices[self.victim]
        n = min(self.num_images, len(own)) // self.batch_size * self.batch_size
        if n == 0:
            return
        picked = draw_private(own, n, self.seed, rnd, self.victim)
        settings = [(self.label, module.defended_update, self.defenses)]
        for k in range(n // self.batch_size):
            idx = picked[k * self.batch_size:(k + 1) * self.batch_size]
            x, y = dm.data.images[idx], dm.data.labels[idx]
            if self.audit.probe is None:  # the federation's own protocol
                update = module.client_update(x, y, self.victim, rnd)
            else:
                update = probe_update(module.model, module.global_params(), x.to(module.device), y.to(module.device),
                                      audit=self.audit, fl=module.fl, client_id=self.victim, round=rnd, seed=module.seed)
            truth = GroundTruth(obs_id=f"r{rnd:04d}_b{k:03d}", dataset=self.data_cfg, indices=idx.clone(),
                                labels=y.clone(), round=rnd, client_id=self.victim)
            capture(self.root, update, settings, truth, model=module.model, model_name=self.model_name,
                    channels=dm.data.channels, num_classes=dm.data.num_classes, fl=module.fl)
