"""The page's "Key facts": the run in a few lines, read from its own records (data, models, seeds, training, when
and where its stages ran, and what a rerun can be expected to reproduce)."""

from __future__ import annotations

import pandas as pd

from sgid_utils.core import catalog
from sgid_utils.core.files import read_fingerprint
from sgid_utils.core.rundir import RunDir
from sgid_utils.params.backbones import backbones, recipe
from sgid_utils.params.schema import Params


def key_facts(params: Params, provenance: pd.DataFrame) -> list[tuple[str, str]]:
    """The run in a few lines: data set and its sizes, models, seeds, training length, when and where it ran."""
    ds = params.dataset
    images = catalog.load(params, "images")
    train, test = images[images.split != ds.test_split], images[images.split == ds.test_split]
    where = (ds.hf_id or ds.source) if ds.source != "imagefolder" else f"image folder {ds.path}"
    splits = "+".join(ds.train_splits) if ds.source != "imagefolder" else "train folder"
    curated = len(catalog.load(params, "curated", missing=[]))
    m = params.models
    return [
        ("Data set", f"{ds.source} ({where}); trained on {splits}, tested on '{ds.test_split}'"),
        ("Images", f"{len(train)} training, {len(test)} test, {images.label.nunique()} classes; "
                   f"{curated} curated generated images"),
        ("Models", f"captioner {m.captioner}; CLIP {m.clip}; diffusion {m.diffusion}"
                   + (f" with ControlNet {m.controlnet}" if params.generation.generator == "controlnet" else "")
                   + "; classifier" + ("s " + ", ".join(f"{b.label} {b.model}" for b in backbones(params))
                                        if params.training.backbones else f" {m.classifier}")),
        ("Seeds",
         f"run seed {params.run.seed}; generation draw {params.run.draw}; training seeds {params.training.seeds}"),
        ("Training",
         f"methods {', '.join(params.training.methods)}; " + "; ".join(recipe(bb) for bb in backbones(params))),
        ("Ran", ran(provenance)),
        ("Reproducibility", reproducibility(params, provenance)),
        ("Params file", str(params.source_file)),
    ]


def reproducibility(params: Params, provenance: pd.DataFrame) -> str:
    """What a rerun can be expected to reproduce: exact files (the CPU; a GPU's training with
    ``training.deterministic``), or the accuracies within seed noise. Read from the run's records: the machines its
    stages started on, and whether its training stage recorded ``training.deterministic`` (recorded only when on)."""
    if provenance.empty:
        return "not recorded (no stage records)"
    on_gpu = any(not m.startswith("CPU only") for ms in provenance.machine for m in ms.split(" / "))
    if not on_gpu:
        return ("every stage ran on the CPU: a rerun with the same library versions and thread count reproduces the "
                "files byte for byte (per-item seeds; the package's kill-and-resume tests check this on the CPU)")
    train = RunDir.of(params).fingerprint_file("training")
    deterministic = train.exists() and read_fingerprint(train).get("training", {}).get("deterministic", False)
    if deterministic:
        return ("on a GPU, training ran with training.deterministic: rerunning the training stage on these images, "
                "on the same GPU model and versions, is expected to reproduce its files (not measured by this "
                "package); generated images on a GPU match a rerun within floating-point tolerance, not bit for bit, "
                "so a rerun from scratch reproduces the accuracies within seed noise")
    return ("on a GPU without training.deterministic: a rerun reproduces the accuracies within seed noise, not the "
            "files (GPU kernels may reorder floating-point sums)")


def ran(provenance: pd.DataFrame) -> str:
    """When the stages started and on which machines, in one line (the table under "When and where" has the rest)."""
    if provenance.empty:
        return "not recorded (this run directory predates the runner's stage records)"
    machines = dict.fromkeys(m for ms in provenance.machine for m in ms.split(" / "))
    return (f"stages started {provenance['first started'].min()} to {provenance['last started'].max()} (UTC) on "
            f"{'; '.join(machines)}; torch {' / '.join(dict.fromkeys(provenance.torch))}")
