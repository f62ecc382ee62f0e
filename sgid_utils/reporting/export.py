"""The curated generated set as a data set others can load: a Hugging Face ``datasets`` image folder.

``export_curated(params, DIR)`` writes ``DIR/train/<class>/<image>.png``, ``DIR/train/metadata.csv``
(one row per image: its ``file_name`` relative to the split folder, the class, the source image,
caption c*, s*, prompt, guidance scale, seed, similarity, every filter decision and the generator's
settings) and a dataset card ``DIR/README.md`` with the settings and the source data set's licence.
``datasets.load_dataset("imagefolder", data_dir=DIR)`` reads it back; with a metadata file the loader
takes the columns from it, so the class is the ``label`` column (a string) rather than a label
inferred from the folder names.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined

from sgid_utils.core import catalog
from sgid_utils.core.files import write_bytes, write_table, write_text
from sgid_utils.core.fingerprints import check_recorded
from sgid_utils.core.images import class_names
from sgid_utils.errors import StageError
from sgid_utils.params.schema import Params

SPLIT = "train"  # the curated set augments the training split; its sources are training images
# (licence id for the card's metadata, what is known about the source images' terms)
LICENCES = {
    "pets": ("cc-by-sa-4.0", "The Oxford-IIIT Pet Dataset (Parkhi et al., 2012) is available under the "
             "Creative Commons Attribution-ShareAlike 4.0 International licence; the copyright of the images "
             "remains with their owners. These images are image-to-image derivatives of its training images, "
             "so share them under CC BY-SA 4.0, crediting the Oxford-IIIT Pet Dataset."),
    "flowers": ("unknown", "The Oxford 102 Category Flower Dataset (Nilsback & Zisserman, 2008) states no "
                "licence on its page; its images were collected from the web. These images derive from its "
                "training images, so their terms are unknown: check them before redistributing."),
    "imagefolder": ("other", "These images derive from the run's own image folder: the licence of your own "
                    "images applies. Replace this paragraph and the card's `license` field before publishing."),
}
SOURCE_NAMES = {"pets": "Oxford-IIIT Pets", "flowers": "Oxford Flowers102", "imagefolder": "an image folder"}
GENERATOR_LICENCES = {"stable-diffusion-v1-5": "Stable Diffusion v1.5 is released under the CreativeML OpenRAIL-M "
                      "licence, whose use-based restrictions (its Attachment A) also govern how its outputs "
                      "may be used."}


def folder_name(class_name: str) -> str:
    """A class name as a portable folder name (the ``label`` column keeps the name itself)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", class_name).strip("_") or "class"


def model_name(ref: str) -> str:
    """A hub id as it is; a local model folder by its name only (no paths of the machine that ran it)."""
    return f"local:{Path(ref.removeprefix('local-dir:')).name}" if ref.startswith(("/", "local-dir:")) else ref


def generator_settings(params: Params) -> dict[str, object]:
    """The settings every image of the set was generated and selected with (repeated on each metadata row)."""
    gen, cur = params.generation, params.curation
    return {"generator": model_name(params.models.diffusion), "prompt_mode": gen.prompt,
            "caption_weight": gen.caption_weight, "label_weight": gen.label_weight,
            "negative_prompt": gen.negative_prompt, "guidance_mode": gen.guidance.mode,
            "guidance_coefficients": " ".join(f"{c:g}" for c in gen.guidance.coefficients),
            "guidance_base_scale": gen.guidance.base_scale, "strength": gen.strength,
            "num_inference_steps": gen.num_inference_steps, "num_candidates": gen.num_candidates,
            "upscale_threshold": cur.upscale_threshold, "selection_rule": cur.select,
            **(controlnet_settings(params) if gen.generator == "controlnet" else
               {"controlnet": "", "controlnet_canny_thresholds": "", "controlnet_conditioning_scale": None})}


def controlnet_settings(params: Params) -> dict[str, object]:
    net = params.generation.controlnet
    return {"controlnet": model_name(params.models.controlnet),
            "controlnet_canny_thresholds": f"{net.low_threshold} {net.high_threshold}",
            "controlnet_conditioning_scale": net.conditioning_scale}


def metadata(params: Params) -> pd.DataFrame:
    """One row per curated image, in the order of the curated table; ``path`` is the generated file to copy."""
    curated = catalog.load(params, "curated")
    best = catalog.load(params, "best_captions").set_index("image_id")
    kept = catalog.load(params, "curated_filtered", missing=None)
    filtered = set() if kept is None else set(kept.image_id)
    names = class_names(catalog.load(params, "images"))
    rows = []
    for r in curated.itertuples():
        rows.append({
            "file_name": f"{folder_name(r.class_name)}/{r.image_id}_{r.generation_pass}_k{r.k}.png",
            "label": r.class_name, "label_id": int(r.label),
            "source_image_id": r.image_id, "source_image": Path(r.source_path).name,
            "source_width": int(r.source_width), "source_height": int(r.source_height),
            "caption": best.loc[r.image_id, "caption"], "caption_decoding": best.loc[r.image_id, "decoding"],
            "s_star": r.s_star, "prompt": r.prompt, "guidance_scale": r.guidance_scale, "seed": int(r.seed),
            "candidate": int(r.k), "generation_pass": r.generation_pass, "input_width": int(r.input_width),
            "input_height": int(r.input_height), "similarity": r.similarity, "label_score": r.label_score,
            "clip_predicted_label": names[int(r.predicted_label)],
            "label_consistent": bool(r.consistent), "fake_probability": r.fake_probability,
            "kept_by_filters": bool(getattr(r, "kept", True)), "dropped_by": getattr(r, "dropped_by", None),
            "in_filtered_set": r.image_id in filtered, "selection_fallback": bool(r.fallback),
            **generator_settings(params), "path": r.path,
        })
    return pd.DataFrame(rows)


def dataset_card(params: Params, table: pd.DataFrame) -> str:
    """The README.md of the exported folder: what the images are, how they were made, their licence, how to
    load them."""
    licence, terms = LICENCES[params.dataset.source]
    generator = next((text for key, text in GENERATOR_LICENCES.items() if key in params.models.diffusion), "")
    n = len(table)
    size = "n<1K" if n < 1_000 else "1K<n<10K" if n < 10_000 else "10K<n<100K"
    env = Environment(loader=PackageLoader("sgid_utils.reporting", "templates"), undefined=StrictUndefined,
                      keep_trailing_newline=True, trim_blocks=True)
    return env.get_template("dataset_card.md.j2").render(
        params=params, source_name=SOURCE_NAMES[params.dataset.source], n=n, size=size, licence=licence,
        terms=terms, generator_terms=generator, split=SPLIT,
        classes=table.drop_duplicates("label_id").sort_values("label_id").label.tolist(),
        settings=generator_settings(params), filters=catalog.load(params, "filters_summary"),
        columns=list(table.columns))


def export_curated(params: Params, to: Path) -> Path:
    """Write the curated set as an image folder with metadata and a card into ``to`` (a new or empty folder)."""
    check_recorded(params, "export")
    to = Path(to).resolve()
    if to.exists() and any(to.iterdir()):
        raise StageError(f"{to} is not empty; export into a new folder (or delete this one first).")
    table = metadata(params)
    split = to / SPLIT
    for file_name, source in zip(table.file_name, table.path):
        write_bytes(split / file_name, Path(source).read_bytes())
    table = table.drop(columns="path")
    write_table(split / "metadata.csv", table)
    write_text(to / "README.md", dataset_card(params, table))
    return to
