"""DA-Fusion's first stage: a textual-inversion token per class, learned on that class's training images.

One item per class (``core.resumable``: resumes per class, shards classes across processes). Each class's token
starts from the initializer word's embedding and is learned by ``augment.inversion.learn_token`` with a seed derived
from (the generation draw, the class), so a class's token does not depend on which process learns it or what it
learned before. The embedding is saved as ``{token: tensor}`` in safetensors, the file diffusers'
``load_textual_inversion`` reads (the da_fusion stage loads it so). Runs only when ``training.methods`` lists
``da_fusion`` or ``da_fusion_recipe``; the settings are ``da_fusion.*``.
"""

from __future__ import annotations

import sys

import pandas as pd
import torch

from sgid_utils.augment.inversion import (
    InversionSettings,
    class_token,
    initial_embedding,
    learn_token,
    own_text_encoder,
)
from sgid_utils.core import catalog
from sgid_utils.core.files import write_atomic
from sgid_utils.core.images import load_run_image
from sgid_utils.core.resumable import BatchPlan, run_items
from sgid_utils.core.rundir import RunDir
from sgid_utils.core.seeding import derive_seed, draw_seed
from sgid_utils.models.loading import load_img2img, resolve_device
from sgid_utils.params.methods import DaFusionParams
from sgid_utils.params.schema import Params

METHODS = ("da_fusion", "da_fusion_recipe")


def wanted(params: Params) -> bool:
    return any(m in params.training.methods for m in METHODS)


def settings(d: DaFusionParams) -> InversionSettings:
    """The loop's settings from ``da_fusion.*``, its learning rate scaled by the batch size under ``scale_lr``."""
    lr = d.inversion_lr * d.inversion_batch_size if d.scale_lr else d.inversion_lr
    return InversionSettings(d.inversion_steps, d.inversion_batch_size, lr, d.inversion_weight_decay, d.flip_p,
                             d.resolution, d.initializer_token)


def save_token(path, token: str, embedding) -> None:
    from safetensors.torch import save_file

    write_atomic(path, lambda t: save_file({token: embedding.contiguous()}, str(t)))


def run(params: Params, images: pd.DataFrame) -> pd.DataFrame | None:
    """A token per class (resumable per class); the table of tokens once every class has one."""
    if not wanted(params):
        print("[sgid] stage inversion: training.methods lists no DA-Fusion method; nothing to learn", file=sys.stderr)
        return pd.DataFrame()
    run_dir = RunDir.of(params)
    train = images[images.split == "train"]
    classes = train.drop_duplicates("label").sort_values("label")
    classes = classes.set_index(classes.label.astype(str), drop=False)  # items are labels ('3'): file-safe names

    def start(todo: list[str]) -> BatchPlan:
        from diffusers import DDPMScheduler

        device = resolve_device(params)
        # bfloat16 on CUDA: gradients reach the token through the UNet, and float16's range underflows them without
        # the loss scaling accelerate adds in fine_tune.py; float32 on the CPU
        pipe = load_img2img(params.models.diffusion, str(device),
                            torch.bfloat16 if device.type == "cuda" else torch.float32)
        noise = DDPMScheduler.from_config(pipe.scheduler.config)
        tokenizer, text_encoder = own_text_encoder(pipe)
        text_encoder.to(device)

        def process(ids: list[str]) -> dict[str, dict]:
            out = {}
            for item in ids:
                name, label = classes.class_name[item], int(classes.label[item])
                token = class_token(name)
                own = [load_run_image(p) for p in train[train.label == label].sort_values("image_id").path]
                seed = derive_seed(draw_seed(params), label, purpose="inversion")
                start_embedding = initial_embedding(tokenizer, text_encoder,
                                                    params.da_fusion.initializer_token).float().cpu()
                embedding, losses = learn_token(tokenizer, text_encoder, pipe.vae, pipe.unet, noise, own, token,
                                                settings(params.da_fusion), seed)
                path = run_dir.class_token(label)
                save_token(path, token, embedding)
                out[item] = {"label": label, "class_name": name, "token": token, "path": run_dir.relative(path),
                             "images": len(own), "steps": len(losses), "seed": seed,
                             "first_loss": losses[0], "last_loss": losses[-1],
                             "mean_loss_first_tenth": float(sum(losses[:max(1, len(losses) // 10)])
                                                            / max(1, len(losses) // 10)),
                             "mean_loss_last_tenth": float(sum(losses[-max(1, len(losses) // 10):])
                                                           / max(1, len(losses) // 10)),
                             "moved": float((embedding - start_embedding).norm())}
            return out

        return BatchPlan(process, 1, "textual inversion (classes)", "da_fusion.inversion_batch_size")

    records = run_items(run_dir.items("inversion"), list(classes.index), start,
                        outputs=lambda _, rec: [run_dir.absolute(rec["path"])])
    if records is None:
        return None  # other shards are still learning
    catalog.save(params, "class_tokens", pd.DataFrame(records))
    return catalog.load(params, "class_tokens")
