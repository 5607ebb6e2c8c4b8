"""Identity leakage (re-identification among private images) and the label-only baselines."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from _attack_fixtures import TinyPrior
from ggl.audit import baselines
from ggl.audit.evaluate import Evaluator
from ggl.audit.reid import Gallery, chance, ranks
from ggl.audit.truth import GroundTruth
from ggl.data.sources import ImageData
from ggl.data.splits import Split


class LinearFeatures(nn.Module):
    """Stand-in for the public domain classifier: a fixed random projection as its features."""

    def __init__(self, dim_in: int, seed: int = 0):
        super().__init__()
        self.proj = torch.randn(dim_in, 16, generator=torch.Generator().manual_seed(seed))

    def features(self, x):
        return x.flatten(1).double().float() @ self.proj


def _gallery(n=60, classes=3, seed=0, classifier=True):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 8, 8, generator=g)
    labels = torch.arange(n) % classes
    indices = torch.arange(1000, 1000 + n)
    return Gallery(images, labels, indices, LinearFeatures(64) if classifier else None, "no classifier here")


def test_the_victim_itself_ranks_first_in_every_space_and_gallery():
    gal = _gallery()
    victims = torch.tensor([1003, 1017, 1042])
    rows = gal.score(gal.images[[3, 17, 42]], victims)
    for row in rows:
        assert {k: v for k, v in row.items() if k.startswith(("reid_top1", "reid_rr"))} == {
            f"reid_{kind}_{space}_{gallery}": 1.0 for kind in ("top1", "rr") for space in ("pixel", "feature")
            for gallery in ("all", "class")}
        assert row["reid_gallery_all"] == 60 and row["reid_gallery_class"] == 20


def test_a_random_image_ranks_the_victim_at_chance_in_expectation():
    m, n = 40, 4000
    g = torch.Generator().manual_seed(1)
    gallery = torch.rand(m, 64, generator=g, dtype=torch.float64)
    queries = torch.rand(n, 64, generator=g, dtype=torch.float64)  # independent of the gallery
    target = torch.randint(0, m, (n,), generator=g)
    rank, top1 = ranks(queries, gallery, target)
    # uniform rank on 1..m: mean (m+1)/2 with sd sqrt((m^2-1)/12); allow 4 standard errors
    se = np.sqrt((m * m - 1) / 12 / n)
    assert abs(rank.mean().item() - (m + 1) / 2) < 4 * se
    assert abs(top1.mean().item() - chance("top1", m)) < 4 * np.sqrt(chance("top1", m) / n)
    rr = (1 / rank).numpy()
    assert abs(rr.mean() - chance("rr", m)) < 4 * rr.std() / np.sqrt(n)


def test_ties_count_half_and_chance_levels_are_exact():
    gallery = torch.tensor([[0.0], [1.0], [1.0], [3.0]])
    rank, top1 = ranks(torch.tensor([[1.0]]), gallery, torch.tensor([1]))
    assert rank.tolist() == [1.5] and top1.tolist() == [0.5]  # one other image at the same distance
    assert chance("top1", 4) == 0.25 and chance("rr", 4) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_feature_space_is_null_without_the_public_classifier():
    gal = _gallery(classifier=False)
    row = gal.score(gal.images[:1], torch.tensor([1000]))[0]
    assert row["reid_top1_feature_all"] is None and row["reid_top1_pixel_all"] == 1.0
    assert gal.feature_reason == "no classifier here"


def test_leakage_is_the_margin_over_the_best_baseline_on_each_image():
    assert baselines.leakage("psnr", 20.0, {"prior_mean": 12.0, "public_mean": 14.0, "prior_sample": None}) == 6.0
    assert baselines.leakage("lpips", 0.2, {"a": 0.5, "b": 0.3}) == pytest.approx(0.1)  # lower is better
    assert baselines.leakage("reid_top1_feature_class", 1.0, {"a": 0.0, "b": 0.5}) == 0.5
    assert baselines.leakage("psnr", None, {"a": 1.0}) is None and baselines.leakage("psnr", 1.0, {"a": None}) is None


def _synthetic_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    n, classes = 60, 3
    images = torch.rand(n, 1, 32, 32, generator=g)
    labels = torch.arange(n) % classes
    split = Split(public=np.arange(0, 30), private=np.arange(30, 50), test=np.arange(50, 60))
    return ImageData("synthetic", images, labels, classes), split


DATA_CFG = {"name": "synthetic"}


def _evaluator(data, split, tmp_path):
    ev = Evaluator(prior_path=tmp_path / "no_prior.pt")  # no classifier: pixel re-identification only
    ev._data_cache[repr(sorted(DATA_CFG.items()))] = (data, split)
    return ev


def test_class_mean_baselines_use_only_the_prior_and_the_public_split(tmp_path):
    G = TinyPrior(num_classes=3)
    data, split = _synthetic_data()
    labels = torch.tensor([0, 2, 1])
    before = _evaluator(data, split, tmp_path).label_only(DATA_CFG, G).images(labels, seed=0)
    changed = data.images.clone()
    changed[split.private] = 1.0 - changed[split.private]  # other private images, same public ones
    after = _evaluator(ImageData("synthetic", changed, data.labels, 3), split, tmp_path).label_only(
        DATA_CFG, G).images(labels, seed=0)
    for name in baselines.BASELINES:
        assert torch.equal(before[name], after[name]), name
    # the public class mean is the public images' mean; changing a public image moves it
    pub = torch.as_tensor(split.public)
    expected = data.images[pub][data.labels[pub] == 2].double().mean(0).float()
    assert torch.allclose(before["public_mean"][1], expected)
    moved = data.images.clone()
    moved[pub[data.labels[pub] == 2][0]] += 0.5
    again = _evaluator(ImageData("synthetic", moved, data.labels, 3), split, tmp_path).label_only(
        DATA_CFG, G).images(labels, seed=0)
    assert not torch.equal(again["public_mean"][1], before["public_mean"][1])


def test_prior_class_mean_is_the_mean_of_seeded_prior_samples():
    G = TinyPrior(num_classes=3)
    means = baselines.prior_class_means(G, 3, samples=50, seed=0, batch=7)  # batching must not matter
    again = baselines.prior_class_means(G, 3, samples=50, seed=0, batch=50)
    assert torch.allclose(means, again, atol=1e-6) and means.shape == (3, 1, 32, 32)
    assert not torch.allclose(means[0], means[1])


# the job's fields of each record (ggl.jobs.attack fills them from its objects)
TAGS = {"setting": "fp32", "defense": "fp32", "attacker": "ggl-l2", "adaptive": False, "seed": 0, "federation": None,
        "probe": "fedsgd"}


def test_evaluate_scores_the_attack_and_every_baseline_with_every_metric(tmp_path):
    G = TinyPrior(num_classes=3)
    data, split = _synthetic_data()
    ev = _evaluator(data, split, tmp_path)
    victims = torch.tensor([31, 44])
    truth_path = GroundTruth("obs", DATA_CFG, victims, data.labels[victims], round=2).save(tmp_path / "gt.pt")
    recon = (data.images[victims] + 0.01).clamp(0, 1)  # a near-perfect reconstruction
    recs, truth, recon_m, base = ev.evaluate(truth_path, "obs", recon.flip(0), data.labels[victims].flip(0), G,
                                             None, seed=0, tags=TAGS)
    assert torch.equal(recon_m, recon) and [r.victim_index for r in recs] == [31, 44]
    assert "no domain classifier beside the prior" in ev.reid_note  # why feature re-identification is null
    for r in recs:
        assert r.metrics["reid_top1_pixel_class"] == 1.0 and r.metrics["reid_gallery_all"] == 20
        assert r.metrics["reid_top1_feature_all"] is None  # no public classifier in this test
        for name in baselines.BASELINES:
            assert isinstance(r.baselines[name]["psnr"], float) and "reid_rr_pixel_all" in r.baselines[name]
        best = max(r.baselines[name]["psnr"] for name in baselines.BASELINES)
        assert r.metric("best_baseline_psnr") == best and r.leakage["psnr"] == pytest.approx(r.metrics["psnr"] - best)
        assert r.leakage["psnr"] > 10 and r.round == 2 and r.capture_id == "obs" and r.attacker == "ggl-l2"


def test_summary_has_the_means_chance_levels_and_the_reason_feature_reid_is_missing(tmp_path):
    from ggl.audit.evaluate import summarize

    G = TinyPrior(num_classes=3)
    data, split = _synthetic_data()
    ev = _evaluator(data, split, tmp_path)
    victims = torch.tensor([31, 44])
    truth_path = GroundTruth("obs", DATA_CFG, victims, data.labels[victims]).save(tmp_path / "gt.pt")
    recon = (data.images[victims] + 0.01).clamp(0, 1)
    recs, *_ = ev.evaluate(truth_path, "obs", recon, data.labels[victims], G, None, seed=0, tags=TAGS)
    s = summarize(recs, 1.0, None, ev.reid_note)
    assert s["reid_top1_pixel_class_mean"] == 1.0 and s["n_images"] == 2
    # 20 private images, 3 classes: victim 31 (class 1) and 44 (class 2) have 7 and 6 same-class images
    assert s["reid_top1_class_chance"] == pytest.approx((1 / 7 + 1 / 6) / 2)
    assert s["reid_top1_all_chance"] == pytest.approx(1 / 20)
    assert s["leakage_psnr_mean"] == pytest.approx(np.mean([r.metrics["psnr"] - r.metric("best_baseline_psnr")
                                                            for r in recs]))
    assert "no domain classifier" in s["reid_feature_note"]
