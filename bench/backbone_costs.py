"""What each backbone profile's training costs, derived from FLOP counts (nothing is trained or timed here).

Forward FLOPs per image come from torch's FlopCounterMode on meta-device copies of each backbone at its
input size (no memory, no weights, offline). Training one image ~ 3 forward passes (forward + backward);
each evaluation is one forward pass per test image. Image counts follow the profile: its backbones, methods,
proportions, seeds and epochs, the official split sizes, and one curated image per source at 100 %. Hours are
at an ASSUMED sustained rate (--tflops, default 100 TFLOP/s: roughly what mixed-precision ResNet-50 and
ViT-B/16 training sustain on an A100-H100 class GPU); `make preflight` measures the real rate on your GPU.

    .venv/bin/python bench/backbone_costs.py params/pets_backbones.yaml params/flowers_backbones.yaml params/pets.yaml
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from sgid_utils.models.loading import create_classifier, preprocessing
from sgid_utils.params.backbones import backbones, configs
from sgid_utils.params.load import load_params
from sgid_utils.params.training import BackboneParams
from sgid_utils.preflight.projection import CLASS_COUNTS, SPLIT_SIZES, image_epochs_by_backbone


def forward_flops(model: str, classes: int, image_size: int | None) -> tuple[float, int]:
    """(forward FLOPs of one image, input side) of a backbone with a ``classes`` head."""
    with torch.device("meta"):
        net = create_classifier(model, classes, image_size, pretrained=False)
        side = preprocessing(net, image_size)[0]
        with FlopCounterMode(display=False) as counter:
            net(torch.randn(1, 3, side, side))
    return counter.get_total_flops(), side


def evaluations(bb: BackboneParams) -> int:
    """Test-split passes of one training run: every ``eval_every`` epochs, and after the last."""
    return len(range(bb.eval_every, bb.epochs + 1, bb.eval_every)) + (bb.epochs % bb.eval_every != 0)


def split_counts(params) -> tuple[int, int]:
    """(training, test) images of a profile from the official split sizes, capped per class as its data set says
    (``dataset.max_per_class``, ``max_test_per_class``: the quick profile's subset)."""
    ds = params.dataset
    n_train = sum(SPLIT_SIZES[ds.source].get(s, 0) for s in ds.train_splits)
    n_test = SPLIT_SIZES[ds.source][ds.test_split]
    if ds.max_per_class:
        n_train = min(n_train, ds.max_per_class * CLASS_COUNTS[ds.source])
    if ds.max_test_per_class:
        n_test = min(n_test, ds.max_test_per_class * CLASS_COUNTS[ds.source])
    return n_train, n_test


def profile_costs(path: str, tflops: float) -> pd.DataFrame:
    params = load_params(path)
    ds = params.dataset
    n_train, n_test = split_counts(params)
    rows = []
    for bb in backbones(params):
        flops, side = forward_flops(bb.model, CLASS_COUNTS[ds.source], bb.image_size)
        mine = [c for c in configs(params) if c.backbone == bb.name]
        image_epochs = image_epochs_by_backbone(params, n_train)[bb.name]
        total = 3 * flops * image_epochs + flops * n_test * evaluations(bb) * len(mine)
        rows.append({"profile": params.run.name, "backbone": bb.label, "GFLOPs/image (fwd)": round(flops / 1e9, 2),
                     "input": side, "runs": len(mine), "epochs": bb.epochs,
                     "train image-epochs (M)": round(image_epochs / 1e6, 2), "PFLOP": round(total / 1e15, 1),
                     f"hours at {tflops:g} TFLOP/s (derived)": round(total / tflops / 1e12 / 3600, 2)})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params", nargs="+")
    parser.add_argument("--tflops", type=float, default=100.0, help="assumed sustained training throughput")
    args = parser.parse_args()
    table = pd.concat([profile_costs(p, args.tflops) for p in args.params], ignore_index=True)
    print(table.to_markdown(index=False))


if __name__ == "__main__":
    main()
