"""The training stage: each backbone trained with Baseline, CutMix, RandAugment, SGID and SGID combined with
CutMix/RandAugment.

A backbone is a timm classifier with its own recipe (``params.training.BackboneParams``): by default the report's
ViT-B/16 (ImageNet-21k) with Adam at a constant learning rate of 1e-4 (what the report gives), for 10 epochs
at batch size 32 (this package's choice: the report gives neither), or the ones ``training.backbones`` lists
(ResNet-50 from scratch, CLIP-ViT, ...). Within a backbone every method shares the recipe, batch size and the
model's own resize-only preprocessing; methods differ only in the augmentation and the generated images added.

With the same number of epochs, SGID at 100 % (twice the images) takes twice the Baseline's optimisation
steps. ``training.equal_steps`` separates the two: every method then stops after its backbone's Baseline
step count, ceil(n_real / batch size) x epochs, its last pass over the larger set partial, with the learning
rate schedule (warm-up, cosine) laid over those same steps (``augment.training.step_plan``). Each result
records its steps. The backbones and configurations come from ``params.backbones``.

Each (backbone, method, proportion, seed) checkpoints at every epoch boundary and resumes there; a finished
one is not retrained. Images are decoded and resized once per process and shared by all configurations.
With ``training.jobs`` > 1 that many configurations train at once, each in a worker process on the same device
(``core.workers.run_ordered``); each seeds itself, so the results are those of one at a time.
"""

from __future__ import annotations

import time
from functools import partial

import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sgid_utils.augment.augmentations import randaugment
from sgid_utils.augment.image_cache import CachedImages, shared_cache
from sgid_utils.augment.replacement import ReplacementSampler, synthetic_indices
from sgid_utils.augment.training import Loop, evaluate, lr_factor, optimizer_for, step_plan, train_epoch
from sgid_utils.core import catalog
from sgid_utils.core.files import pin_fingerprint, read_record, write_json
from sgid_utils.core.fingerprints import backbone_fingerprint
from sgid_utils.core.resumable import gpu_memory_hint, my_share
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.seeding import derive_seed, deterministic_torch, seed_everything
from sgid_utils.core.workers import run_ordered
from sgid_utils.models.loading import create_classifier, preprocessing, resolve_device
from sgid_utils.params.backbones import GENERATIVE, RANDAUGMENT, TrainConfig, backbone, backbones, configs
from sgid_utils.params.methods import BY_METHOD, REPLACING
from sgid_utils.params.schema import Params
from sgid_utils.params.training import BackboneParams


def sgid_subset(curated: pd.DataFrame, proportion: float, run_seed: int) -> pd.DataFrame:
    """round(proportion * n) curated images, nested across proportions (25% is inside 50%, ...).

    The order is a seeded hash of the image id, so it is fixed for a run and independent of the
    training seed: seeds then measure training noise, not which images were drawn. The caller passes
    ``run.seed``, not the generation draw's seed: a second draw (``run.draw``) subsets the same sources.
    """
    return _ordered(curated, run_seed).head(int(proportion * len(curated) + 0.5)).reset_index(drop=True)  # half up


def size_matched(curated: pd.DataFrame, filtered: pd.DataFrame, proportion: float, run_seed: int) -> pd.DataFrame:
    """The unfiltered curated set cut at random to the size of the filtered set at ``proportion``: the control that
    tells "filtering helps" from "fewer generated images help" (the filters drop candidates and whole sources)."""
    n = len(sgid_subset(filtered, proportion, run_seed))
    return _ordered(curated, run_seed, purpose="sgid-size-matched").head(n).reset_index(drop=True)


def _ordered(curated: pd.DataFrame, run_seed: int, purpose: str = "sgid-subset") -> pd.DataFrame:
    """The curated set in a seeded random order of its image ids, fixed for a run and independent of training seeds."""
    order = curated.assign(_key=[derive_seed(run_seed, i, purpose=purpose) for i in curated.image_id])
    return order.sort_values("_key", kind="stable").drop(columns="_key")


def make_loaders(params: Params, cfg: TrainConfig, bb: BackboneParams, model, train: pd.DataFrame, test: pd.DataFrame,
                 loader_gen: torch.Generator, device: torch.device) -> tuple[DataLoader, DataLoader]:
    """Train and test loaders over the decoded-once image cache, with the model's own preprocessing (timm config)."""
    t = params.training
    size, mean, std = preprocessing(model, bb.image_size)
    cache = shared_cache(size)
    augment = randaugment(t) if cfg.method in RANDAUGMENT else None
    train_ds = CachedImages(train.path.tolist(), train.label_idx.tolist(), cache, mean, std, augment)
    test_ds = CachedImages(test.path.tolist(), test.label_idx.tolist(), cache, mean, std)
    cache.warm(train_ds.paths + test_ds.paths)
    pin = device.type == "cuda"
    workers = t.num_workers if device.type == "cuda" else 0
    order = {"shuffle": True}
    if cfg.method in REPLACING:  # a method's recipe: real images, each replaced by a synthetic one with probability p
        real = train[train.origin == "real"]
        order = {"sampler": ReplacementSampler(len(real), synthetic_indices(
            real.image_id.tolist(), train.image_id[train.origin == "generated"].tolist(), len(real)),
            getattr(params, BY_METHOD[cfg.method].section).synthetic_probability, loader_gen)}
    train_loader = DataLoader(train_ds, batch_size=bb.batch_size, generator=loader_gen, num_workers=workers,
                              pin_memory=pin, persistent_workers=False, **order)
    test_loader = DataLoader(test_ds, batch_size=t.eval_batch_size, num_workers=workers, pin_memory=pin)
    return train_loader, test_loader


def train_config(params: Params, cfg: TrainConfig, train: pd.DataFrame, test: pd.DataFrame, num_classes: int) -> dict:
    """Train one configuration (resuming from its checkpoint); returns and saves its result."""
    t, run, bb = params.training, RunDir.of(params), backbone(params, cfg.backbone)
    if (done := read_record(run.result(cfg.name))) is not None:  # a damaged result is set aside: trained again
        run.checkpoint(cfg.name).unlink(missing_ok=True)  # a run killed between its result and this cleanup
        return done
    device = resolve_device(params)
    deterministic_torch(t.deterministic)  # here, not once per stage: with training.jobs each job is its own process
    seed = derive_seed(params.run.seed, "train", cfg.seed, purpose="training")
    # head (or, from scratch, every weight) init, data order (via loader_gen), CutMix and RandAugment draws
    seed_everything(seed)
    what = f"training.backbones[{bb.name}].model" if bb.name else "models.classifier"
    model = create_classifier(bb.model, num_classes, bb.image_size, pretrained=bb.pretrained, what=what)
    loader_gen = torch.Generator().manual_seed(seed)
    train_loader, test_loader = make_loaders(params, cfg, bb, model, train, test, loader_gen, device)
    model = model.to(device)
    use_amp = t.amp and device.type == "cuda"
    optimizer = optimizer_for(bb, model)
    n_real = int((train.origin == "real").sum())
    plan = step_plan(bb, n_real if cfg.method in REPLACING else len(train), n_real, t.equal_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(bb, plan.schedule_epoch))
    loop = Loop(model, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=use_amp), loader_gen, [])
    if run.checkpoint(cfg.name).exists():
        loop.resume(run.checkpoint(cfg.name), plan.steps_per_epoch)
    preds = None
    while loop.epoch < plan.epochs:
        began = time.time()
        train_loss = train_epoch(loop, train_loader, cfg, t, device, use_amp,
                                 f"{cfg.name} epoch {loop.epoch + 1}/{plan.epochs}", plan.total - loop.steps)
        test_acc = test_loss = float("nan")
        if (loop.epoch + 1) % bb.eval_every == 0 or loop.epoch + 1 == plan.epochs:
            test_acc, test_loss, preds = evaluate(model, test_loader, device, use_amp)
        loop.history.append({"epoch": loop.epoch + 1, "train_loss": train_loss, "test_loss": test_loss,
                             "test_acc": test_acc, "lr": loop.optimizer.param_groups[0]["lr"],
                             "seconds": time.time() - began})
        loop.epoch += 1
        loop.save(run.checkpoint(cfg.name))
    catalog.save(params, "metrics", pd.DataFrame(loop.history), config=cfg.name)
    if preds is None:  # resumed after the last epoch's checkpoint: predictions were not kept
        _, _, preds = evaluate(model, test_loader, device, use_amp)
    catalog.save(params, "predictions", test[["image_id", "label_idx"]].assign(pred=preds), config=cfg.name)
    result = {"config": cfg.name, "backbone": cfg.backbone, "method": cfg.method, "setting": cfg.setting,
              "proportion": cfg.proportion, "seed": cfg.seed, "test_acc": loop.history[-1]["test_acc"],
              "epochs": plan.epochs, "steps": loop.steps,
              "train_images": len(train), "generated_images": int((train.origin == "generated").sum())}
    write_json(run.result(cfg.name), result)
    # the result is final; the checkpoint (hundreds of MB for ViT-B) is not
    run.checkpoint(cfg.name).unlink(missing_ok=True)
    return result


def train_one(params: Params, cfg: TrainConfig, data: pd.DataFrame, test: pd.DataFrame, num_classes: int) -> dict:
    """``train_config`` with the stage's advice on out-of-memory: one call of the stage's loop, or one job of it."""
    size = backbone(params, cfg.backbone).batch_size
    jobs = f", or training.jobs (now {params.training.jobs})" if params.training.jobs > 1 else ""
    with gpu_memory_hint(f"training {cfg.name}",
                         f"Lower the batch size (training.batch_size or the backbone's; now {size}){jobs}."):
        return train_config(params, cfg, data, test, num_classes)


def training_sets(params: Params, images: pd.DataFrame | None = None,
                  ) -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple[str, float], pd.DataFrame], int]:
    """Real train/test tables with contiguous class indices, and the generated additions per (method, proportion).

    ``images``: the data stage's table when the caller has it already (else read from the run dir).
    """
    images = catalog.load(params, "images") if images is None else images
    labels = sorted(images.loc[images.split == "train", "label"].unique())
    index = {int(v): i for i, v in enumerate(labels)}
    images = images[images.label.isin(labels)].assign(label_idx=lambda d: d.label.map(index), origin="real")
    train, test = images[images.split == "train"], images[images.split == "test"]
    additions: dict[tuple[str, float], pd.DataFrame] = {}
    for cfg in configs(params):
        if cfg.method in GENERATIVE and (cfg.method, cfg.proportion) not in additions:
            # the combined methods add SGID's set; another augmentation its own (config.methods)
            entry = BY_METHOD[cfg.method].images if cfg.method in BY_METHOD else "curated"
            curated = catalog.load(params, "curated_filtered" if cfg.method == "sgid_filtered" else entry)
            replaces = cfg.method in REPLACING  # its own recipe: every synthetic image, drawn by the sampler
            if cfg.method in BY_METHOD and cfg.method != "sgid" and not replaces:  # one per real image: the first
                curated = curated.drop_duplicates("image_id")
            curated = curated.assign(label_idx=lambda d: d.label.map(index), origin="generated")
            if replaces:
                subset = curated
            elif cfg.method == "sgid_size_matched":
                subset = size_matched(curated, catalog.load(params, "curated_filtered"), cfg.proportion,
                                      params.run.seed)
            else:
                subset = sgid_subset(curated, cfg.proportion, params.run.seed)
            additions[(cfg.method, cfg.proportion)] = subset[["image_id", "path", "label", "label_idx", "origin"]]
    return train.reset_index(drop=True), test.reset_index(drop=True), additions, len(labels)


def run(params: Params, images: pd.DataFrame) -> pd.DataFrame | None:
    """Train every (backbone, method, proportion, seed); write the results table (one row per run).

    Under several processes (``--shard`` or ``accelerate launch``) each trains its share of the
    configurations on its own GPU; the table is written once every configuration has a result.
    """
    run = RunDir.of(params)
    for bb in backbones(params):
        if bb.name:  # a listed backbone; the implicit one's recipe (training.*) is in the stage's own fingerprint
            pin_fingerprint(run.backbone_fingerprint(bb.name), backbone_fingerprint(bb), f"train ({bb.label})",
                              outputs=f"{run.stage('training')}/{bb.name}-* (that backbone's runs) and "
                                      f"{run.backbone_fingerprint(bb.name)}")
    train, test, additions, num_classes = training_sets(params, images)
    all_configs = configs(params)
    mine = set(my_share(c.name for c in all_configs))
    todo = [c for c in all_configs if c.name in mine]  # a finished one returns at once (and drops a stale checkpoint)

    def data_for(cfg: TrainConfig) -> pd.DataFrame:
        extra = additions.get((cfg.method, cfg.proportion))
        return pd.concat([train, extra], ignore_index=True) if extra is not None else train

    jobs = min(params.training.jobs, sum(not run.result(c.name).exists() for c in todo))
    if jobs > 1:  # the longest (most images) start first, so that none runs alone at the end
        run_ordered([partial(train_one, params, cfg, data_for(cfg), test, num_classes) for cfg in todo],
                    [set() for _ in todo], jobs, sizes=[len(data_for(cfg)) for cfg in todo])
    else:
        for cfg in tqdm(todo, desc="training runs", unit="run"):
            train_one(params, cfg, data_for(cfg), test, num_classes)
    results = [read_record(run.result(c.name)) for c in all_configs]
    if any(r is None for r in results):
        return None
    table = pd.DataFrame([{"backbone": "", **r} for r in results])  # "": made before backbones
    catalog.save(params, "training_results", table)
    return table
