import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from sgid_utils.augment.augmentations import cutmix_batch, mixed_loss, randaugment
from sgid_utils.augment.training import lr_factor, step_plan, train_step
from sgid_utils.core import catalog
from sgid_utils.core.rundir import RunDir
from sgid_utils.params.backbones import TrainConfig, backbones, configs
from sgid_utils.params.training import BackboneParams, TrainingParams
from sgid_utils.stages.training import sgid_subset, size_matched, train_config, training_sets

from .conftest import copy_stages, resnet_scratch_entry


def _batch(n=8, size=32):
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size).clone()
    return x, torch.arange(n)


def test_cutmix_lambda_is_the_exact_unpasted_area():
    np.random.seed(0)
    torch.manual_seed(0)
    checked = 0
    for _ in range(50):
        x, y = _batch()
        out, y_a, y_b, lam = cutmix_batch(x, y, alpha=1.0, prob=1.0)
        assert torch.equal(y_a, y)
        for j in range(len(y)):
            if y_b[j] == y[j]:
                continue
            pasted = (out[j, 0] != j).sum().item()
            assert pasted == pytest.approx((1 - lam) * 32 * 32)
            assert torch.all(out[j, 0][out[j, 0] != j] == y_b[j].float())  # pasted from the partner image
            checked += 1
    assert checked > 100


def test_cutmix_probability_and_off_switch():
    np.random.seed(1)
    x, y = _batch()
    applied = sum(cutmix_batch(x, y, 1.0, 0.5)[3] < 1.0 for _ in range(2000))
    assert 0.45 < applied / 2000 < 0.55
    assert all(cutmix_batch(x, y, 1.0, 0.0)[3] == 1.0 for _ in range(100))
    out, _, y_b, lam = cutmix_batch(x, y, 1.0, 0.0)
    assert torch.equal(out, x) and torch.equal(y_b, y) and lam == 1.0


def test_mixed_loss_weights_both_targets_by_lambda():
    logits = torch.randn(4, 5)
    a, b = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 4, 0, 1])
    expected = 0.3 * F.cross_entropy(logits, a) + 0.7 * F.cross_entropy(logits, b)
    assert mixed_loss(logits, a, b, 0.3) == pytest.approx(expected.item())
    assert mixed_loss(logits, a, b, 1.0) == pytest.approx(F.cross_entropy(logits, a).item())


def test_randaugment_is_torchvisions_with_n2_m9():
    ra = randaugment(TrainingParams())
    assert (ra.num_ops, ra.magnitude, ra.num_magnitude_bins) == (2, 9, 31)
    torch.manual_seed(0)
    img = torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)
    assert any(not torch.equal(ra(img), img) for _ in range(5))


def test_sgid_subsets_have_the_right_size_and_are_nested():
    curated = pd.DataFrame({"image_id": [f"i{n}" for n in range(10)]})
    subsets = {p: set(sgid_subset(curated, p, 0).image_id) for p in (0.25, 0.5, 0.75, 1.0)}
    assert [len(s) for s in subsets.values()] == [3, 5, 8, 10]
    assert subsets[0.25] < subsets[0.5] < subsets[0.75] < subsets[1.0]
    assert set(sgid_subset(curated, 0.5, 1).image_id) != subsets[0.5]  # another run seed, another draw
    assert len(sgid_subset(curated, 0.0, 0)) == 0


def test_the_size_matched_control_cuts_the_unfiltered_set_to_the_filtered_sets_size():
    curated = pd.DataFrame({"image_id": [f"i{n}" for n in range(20)]})
    filtered = curated.iloc[[1, 4, 5, 9, 12, 13, 17]]  # the filters dropped 13 of 20
    matched = size_matched(curated, filtered, 1.0, 0)
    assert len(matched) == len(filtered) == 7 and set(matched.image_id) <= set(curated.image_id)
    assert set(matched.image_id) != set(filtered.image_id)  # a random cut of the unfiltered set, not the kept images
    assert matched.equals(size_matched(curated, filtered, 1.0, 0))  # fixed for a run: the same set on every seed
    assert len(size_matched(curated, filtered, 0.5, 0)) == len(sgid_subset(filtered, 0.5, 0)) == 4
    assert set(size_matched(curated, filtered, 1.0, 1).image_id) != set(matched.image_id)  # another run seed


def test_the_size_matched_set_is_drawn_from_the_runs_unfiltered_curated_set(pipeline_run):
    run = RunDir.of(pipeline_run)
    curated = pd.read_parquet(catalog.path(run, "curated"))
    filtered = pd.read_parquet(catalog.path(run, "curated_filtered"))
    methods = [*pipeline_run.training.methods, "sgid_size_matched"]
    params = pipeline_run.model_copy(update={"training": pipeline_run.training.model_copy(update={"methods": methods})})
    *_, additions, _ = training_sets(params)
    matched = additions[("sgid_size_matched", 1.0)]
    assert len(matched) == len(filtered) < len(curated)
    assert set(matched.image_id) <= set(curated.image_id) and (matched.origin == "generated").all()


def test_size_matched_configs_follow_the_filtered_proportions(make_params):
    params = make_params(training={"methods": ["baseline", "sgid_filtered", "sgid_size_matched"],
                                   "filtered_proportions": [0.5, 1.0], "seeds": [0, 1]})
    matched = [c for c in configs(params) if c.method == "sgid_size_matched"]
    assert [(c.setting, c.seed) for c in matched] == [("SGID size-matched (50%)", 0), ("SGID size-matched (50%)", 1),
                                                      ("SGID size-matched (100%)", 0), ("SGID size-matched (100%)", 1)]
    assert matched[0].name == "sgidsm050_seed0"


def test_configs_cover_methods_proportions_and_seeds(make_params):
    cfgs = configs(make_params())
    assert len(cfgs) == (3 + 2 + 1 + 3) * 2
    assert {c.setting for c in cfgs} == {"Baseline", "CutMix", "RandAugment", "SGID (50%)", "SGID (100%)",
                                         "SGID filtered (100%)", "Real Guidance (100%)", "DA-Fusion (100%)",
                                         "DA-Fusion (its recipe)"}
    assert len({c.name for c in cfgs}) == len(cfgs)


def test_training_results_metrics_and_predictions(pipeline_run):
    p = pipeline_run
    run = RunDir.of(p)
    results = pd.read_parquet(catalog.path(run, "training_results"))
    curated = pd.read_parquet(catalog.path(run, "curated"))
    filtered = pd.read_parquet(catalog.path(run, "curated_filtered"))
    assert len(results) == 18
    sgid = results[results.method.isin(["sgid", "sgid_filtered"])].set_index("setting")
    assert sgid.loc["SGID filtered (100%)", "generated_images"].tolist() == [len(filtered)] * 2
    assert sgid.loc["SGID (100%)", "generated_images"].tolist() == [len(curated)] * 2
    assert sgid.loc["SGID (50%)", "generated_images"].tolist() == [int(len(curated) * 0.5 + 0.5)] * 2
    assert (results[results.method.isin(["baseline", "cutmix", "randaugment"])].generated_images == 0).all()
    for row in results.itertuples():
        metrics = pd.read_csv(catalog.path(run, "metrics", config=row.config))
        preds = pd.read_parquet(catalog.path(run, "predictions", config=row.config))
        assert metrics.epoch.tolist() == list(range(1, p.training.epochs + 1))
        assert metrics.test_acc.iloc[-1] == pytest.approx(row.test_acc, abs=1e-12)  # read back from CSV
        assert (preds.pred == preds.label_idx).mean() == pytest.approx(row.test_acc)
        assert not run.checkpoint(row.config).exists()


@pytest.mark.parametrize("backbone", ["", "resnet", "equal-steps"])
def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_result(make_params, pipeline_run, tiny_backbones,
                                                                     monkeypatch, backbone):
    """The report's ViT (Adam, constant lr), a ResNet from scratch (SGD, warm-up + cosine: the schedule resumes too),
    and SGID (50 %) under equal steps, killed in its partial last epoch."""
    import sgid_utils.stages.training as tr

    if backbone == "equal-steps":
        cfg = TrainConfig("sgid", seed=0, proportion=0.5)
        training = {"epochs": 3, "methods": ["sgid"], "sgid_proportions": [0.5], "equal_steps": True}
    else:
        cfg = TrainConfig("cutmix", seed=0, backbone=backbone)
        listed = {"backbones": [resnet_scratch_entry(tiny_backbones)]} if backbone else {}
        training = {"epochs": 2, "methods": ["cutmix"], **listed}
    runs = {}
    for name in ("straight", "killed"):
        runs[name] = make_params(name, training=training)
        copy_stages(pipeline_run, runs[name], "data", "generation", "upscaling", "curation")
    train, test, additions, n = training_sets(runs["straight"])
    if backbone == "equal-steps":
        real = len(train)
        train = pd.concat([train, additions[("sgid", 0.5)]], ignore_index=True)
        plan = step_plan(backbones(runs["straight"])[0], len(train), real, True)
        assert plan.epochs == 2 and plan.total < 2 * plan.steps_per_epoch  # the second epoch is partial
    full = train_config(runs["straight"], cfg, train, test, n)

    # Epoch 1 of 2 completes and checkpoints; the process dies while evaluating epoch 2.
    calls = {"n": 0}
    original_evaluate = tr.evaluate

    def dies_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original_evaluate(*args, **kwargs)

    monkeypatch.setattr(tr, "evaluate", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train_config(runs["killed"], cfg, train, test, n)
    monkeypatch.setattr(tr, "evaluate", original_evaluate)
    killed, straight = RunDir.of(runs["killed"]), RunDir.of(runs["straight"])
    assert killed.checkpoint(cfg.name).exists() and not killed.result(cfg.name).exists()
    resumed = train_config(runs["killed"], cfg, train, test, n)
    assert resumed["test_acc"] == full["test_acc"]
    pd.testing.assert_frame_equal(pd.read_parquet(catalog.path(killed, "predictions", config=cfg.name)),
                                  pd.read_parquet(catalog.path(straight, "predictions", config=cfg.name)))
    a, b = (pd.read_csv(catalog.path(r, "metrics", config=cfg.name)) for r in (killed, straight))
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    steps = plan.total if backbone == "equal-steps" else 2 * math.ceil(len(train) / 4)  # batch size 4
    assert resumed["steps"] == full["steps"] == steps


def test_equal_steps_give_every_method_the_baselines_steps_and_schedule():
    """ceil(n_real / batch) x epochs for every set size; warm-up and cosine laid over those steps, so the learning
    rate of SGID at 100 % follows the Baseline's step for step and reaches zero at the same last step."""
    bb = BackboneParams(name="r", model="resnet50", lr=0.1, epochs=3, batch_size=4, schedule="cosine", warmup_epochs=1)
    baseline = step_plan(bb, 10, 10, equal_steps=True)
    assert (baseline.steps_per_epoch, baseline.total, baseline.epochs) == (3, 9, 3)
    assert step_plan(bb, 10, 10, equal_steps=False) == baseline
    sgid = step_plan(bb, 20, 10, equal_steps=True)  # twice the images: 5 batches a pass, 2 passes, the second partial
    assert (sgid.steps_per_epoch, sgid.total, sgid.epochs, sgid.schedule_epoch) == (5, 9, 2, 3)
    assert step_plan(bb, 20, 10, equal_steps=False).total == 15  # equal epochs: more steps
    same, base = lr_factor(bb, sgid.schedule_epoch), lr_factor(bb, baseline.schedule_epoch)
    assert [same(s) for s in range(sgid.total + 1)] == [base(s) for s in range(baseline.total + 1)]
    assert base(baseline.total) == pytest.approx(0.0) and base(2) == 1.0  # warm-up of one (Baseline) epoch: 3 steps
    with pytest.raises(ValueError, match="real images"):
        step_plan(bb, 5, 10, equal_steps=True)


def test_image_size_other_than_the_pretrained_one_trains(make_params, pipeline_run):
    params = make_params("size", training={"image_size": 48, "methods": ["baseline"], "seeds": [0]})
    copy_stages(pipeline_run, params, "data")
    train, test, _, n = training_sets(params)
    result = train_config(params, TrainConfig("baseline", seed=0), train, test, n)
    assert 0 <= result["test_acc"] <= 1


def test_evaluation_autocasts_only_when_training_does():
    """training.amp: false must hold at evaluation too (it used to autocast on CUDA regardless)."""
    from torch.utils.data import DataLoader, TensorDataset

    from sgid_utils.augment.training import evaluate

    class Recorder(torch.nn.Linear):
        def forward(self, x):
            self.seen.append(torch.is_autocast_enabled("cpu"))
            return super().forward(x)

    model = Recorder(4, 3)
    loader = DataLoader(TensorDataset(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])), batch_size=3)
    for use_amp in (False, True):
        model.seen = []
        acc, loss, preds = evaluate(model, loader, torch.device("cpu"), use_amp)
        assert model.seen == [use_amp, use_amp] and len(preds) == 6 and 0 <= acc <= 1


def test_a_step_the_loss_scaler_skips_is_reported_and_changes_nothing():
    """fp16's GradScaler (here on the CPU, the same class) skips a step whose gradients overflow: the weights stay, and
    train_step says so, so that the learning-rate schedule counts only the steps taken."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    y = torch.tensor([0, 1])
    before = model.weight.detach().clone()
    _, stepped = train_step(model, optimizer, scaler, torch.full((2, 4), float("inf")), y, y, 1.0, use_amp=False)
    assert not stepped and torch.equal(model.weight, before)
    _, stepped = train_step(model, optimizer, scaler, torch.randn(2, 4), y, y, 1.0, use_amp=False)
    assert stepped and not torch.equal(model.weight, before)
    off = torch.amp.GradScaler("cpu", enabled=False)  # no AMP (the CPU default): every step counts
    assert train_step(model, optimizer, off, torch.randn(2, 4), y, y, 1.0, use_amp=False)[1]


def test_configurations_trained_at_once_give_the_one_at_a_time_results(make_params, pipeline_run, monkeypatch):
    """training.jobs: 2 worker processes give each configuration's result, per-epoch history (losses, accuracy) and
    predictions as one process does, to the bit (one thread each, as here)."""
    import sgid_utils.stages.training as tr
    from sgid_utils.core import catalog
    from sgid_utils.core.runner import run_stage

    pools, original = [], tr.run_ordered
    monkeypatch.setattr(tr, "run_ordered", lambda calls, after, jobs, sizes: pools.append(jobs) or
                        original(calls, after, jobs, sizes))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    training = {"methods": ["baseline", "randaugment", "sgid"], "sgid_proportions": [1.0], "seeds": [0, 1]}
    runs, tables = {}, {}
    try:
        for jobs in (1, 2):
            runs[jobs] = make_params(f"jobs{jobs}", training={**training, "jobs": jobs})
            copy_stages(pipeline_run, runs[jobs], "data", "generation", "upscaling", "curation")
            tables[jobs] = run_stage("training", runs[jobs])
    finally:
        torch.set_num_threads(threads)
    assert len(tables[1]) == 6 and pools == [2]  # jobs 1 trains in this process, jobs 2 on a pool of two
    pd.testing.assert_frame_equal(tables[1], tables[2])
    for name in tables[1].config:
        for table in ("metrics", "predictions"):
            one, two = (catalog.load(runs[j], table, config=name) for j in (1, 2))
            pd.testing.assert_frame_equal(one.drop(columns=["seconds"], errors="ignore"),
                                          two.drop(columns=["seconds"], errors="ignore"), check_exact=True)
