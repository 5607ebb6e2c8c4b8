"""Soteria: the pruned share of the representation, its scores, a 2-round federation, the adaptive model."""
from __future__ import annotations

import math

import pytest
import torch

from _attack_fixtures import one_torch_thread  # noqa: F401
from ggl.defenses import parse_defense
from ggl.defenses.soteria import soteria_keep, soteria_scores
from ggl.core.errors import ConfigError
from ggl.fl.callbacks import UpdateTransform, apply_defenses, build_defense_callbacks
from ggl.fl.client import train_client
from ggl.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _client(arch="lenet", n=3, seed=0):
    model = build_model(arch, 1, 10, init="dlg" if arch == "lenet" else "default", seed=seed).double()
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 1, 32, 32, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)
    params = {k: v.detach() for k, v in model.named_parameters()}
    update = train_client(model, params, x, y, client_id=0, round=0, seed=0, lr=0.1, momentum=0.0,
                          weight_decay=0.0, batch_size=n, local_steps=1, data_gen=torch.Generator().manual_seed(0))
    return model, params, x, update


def test_scores_are_the_papers_ratio_per_feature():
    model, params, x, _ = _client()
    scores = soteria_scores(model, params, x, "fc")
    assert scores.shape == (768,)
    with torch.no_grad():
        r = model.body(x).flatten(1)  # the input of `fc`: the representation
    for f in (0, 100, 767):  # an independent computation: each image's input gradient separately
        sq = 0.0
        for b in range(x.shape[0]):
            xb = x[b:b + 1].clone().requires_grad_(True)
            (g,) = torch.autograd.grad(model.body(xb).flatten(1)[0, f], xb)
            sq += float(g.pow(2).sum())
        assert float(scores[f]) == pytest.approx(float(r[:, f].norm()) / math.sqrt(sq), rel=1e-9)


@pytest.mark.parametrize("percent", [0.0, 10.0, 33.3, 60.0, 90.0])
def test_pruned_columns_are_the_configured_share_with_the_largest_scores(percent):
    model, params, x, update = _client()
    scores = soteria_scores(model, params, x, "fc")
    keep = soteria_keep(scores, percent)
    k = math.floor(round(percent * 768 / 100, 9))
    assert int((~keep).sum()) == k
    if 0 < k < 768:
        assert float(scores[~keep].min()) >= float(scores[keep].max())
    if percent == 60.0:  # the whole defense on the client's update: only fc.weight's pruned columns change
        sent = apply_defenses(build_defense_callbacks([parse_defense({"name": "soteria", "percent": 60}, "d")]),
                              None, None, update)
        i = update.names.index("fc.weight")
        zero_cols = (sent.tensors[i] == 0).all(0)
        assert torch.equal(zero_cols, ~keep) and int(zero_cols.sum()) == 460  # floor(0.6 * 768)
        assert torch.equal(sent.tensors[i][:, keep], update.tensors[i][:, keep])
        assert all(torch.equal(a, b) for j, (a, b) in enumerate(zip(sent.tensors, update.tensors)) if j != i)
        assert sent.bits == update.bits  # sent in the same format


def test_a_layer_that_is_not_linear_is_named_with_the_choices():
    model, _, _, _ = _client("cnn")
    defense = parse_defense({"name": "soteria", "layer": "features.0"}, "defenses[0]")
    with pytest.raises(ConfigError, match=r"'defenses\[0\]\.layer' = 'features.0'.*classifier\.1, classifier\.3"):
        defense.setup(model, "defenses[0]")
    with pytest.raises(ConfigError, match=r"defenses\[0\]\.percent"):
        parse_defense({"name": "soteria", "percent": 100}, "defenses[0]")


class _Record(UpdateTransform):
    def __init__(self):
        super().__init__()
        self.sent = []

    def on_client_update(self, trainer, module, update):
        self.sent.append(update)
        return update


def test_two_round_federation_prunes_every_update(make_cfg):
    from ggl.jobs.federation import run_federation

    record = _Record()
    res = run_federation(make_cfg("defenses=[{name: soteria, percent: 50, layer: classifier.3}]",
                                  "fl.local_steps=1", "data.limit=100"), extra_callbacks=[record])
    assert res["final"]["rounds"] == 2 and len(record.sent) == 8  # 4 clients x 2 rounds
    for u in record.sent:
        w = u.tensors[u.names.index("classifier.3.weight")]
        assert int((w == 0).all(0).sum()) >= 64  # half of the 128 features, at least (dead ReLUs add zeros)
    numel = sum(t.numel() for t in record.sent[0].tensors)
    assert res["final"]["uplink_bits_per_round"] == 4 * 32 * numel


def test_adaptive_loss_is_zero_at_the_true_latent():
    from test_new_defenses import _at_truth

    adaptive, unaware = _at_truth([{"name": "soteria", "percent": 60}])
    assert unaware > 1e-9 and adaptive <= 1e-12 * unaware


def test_the_chain_can_be_checked_against_the_model_before_a_run_writes_anything():
    from ggl.fl.callbacks import check_defenses_fit

    model, _, _, _ = _client("cnn")
    check_defenses_fit([parse_defense({"name": "soteria", "layer": "classifier.1"}, "d")], model)
    with pytest.raises(ConfigError, match=r"'defenses\[1\]\.layer' = 'fc'"):
        check_defenses_fit([parse_defense({"name": "clip"}, "d"), parse_defense({"name": "soteria", "layer": "fc"}, "d")],
                           model)
