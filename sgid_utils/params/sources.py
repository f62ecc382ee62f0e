"""Where every default of the params schema comes from: the paper, the reproduction report, or this package.

A reader of a verdict must be able to tell the report's settings from the package's own choices, so each setting
(leaf field) of ``sgid_utils.params.schema.Params`` carries a ``Source``:

- ``paper``: Li et al., arXiv 2302.02070, only where its abstract says it or the reproduction report quotes it as
  the paper's (the guidance mapping, "defined as in the original paper");
- ``report``: the reproduction report ("Semantic-Guided Generative Image Augmentation Method with Diffusion Models
  for Image Classification (AI6103 reproduction report)"), with its section and, where the value is our reading of
  its words, that it is a reading;
- ``package``: this package's choice, with a one-line reason;
- ``method``: a compared augmentation's own public code or paper (``params.methods``), naming the repository and
  the file (Real Guidance's settings come from DA-Fusion's re-implementation, brandontrabucco/da-fusion at commit
  ea784ad, as the comparison's issue asks).

Keys are the dotted paths of the schema: ``generation.guidance.mode``. A list of sections has one key for the list
itself (``training.backbones``) and one per field of its items, written with ``[]``
(``training.backbones[].optimizer``); an optional section likewise (``references.headline``,
``references.headline.gains``).
In ``params.settings.settings_table`` the ``[]`` holds the item's name (or its position when it has none):
``training.backbones[resnet50_scratch].lr``. ``source_of`` accepts either form. The data lives here once; the
report page, docs/CHOICES.md (checked by tests/test_sources.py) and the params comments follow it.
"""

from __future__ import annotations

import difflib
import re

from sgid_utils.params.methods import METHOD_SOURCES
from sgid_utils.params.origins import Source
from sgid_utils.params.origins import from_paper as _paper
from sgid_utils.params.origins import from_report as _report
from sgid_utils.params.origins import ours as _ours
from sgid_utils.params.samplers import SAMPLER_SOURCES

# dataset.hf_id when left unset: the Hugging Face data set each named source loads.
HUB_IDS = {"pets": "timm/oxford-iiit-pet", "flowers": "dpdl-benchmark/oxford_flowers102"}
COLUMNS = ["setting", "this run", "package default", "origin", "source"]
REQUIRED = "(required: no default)"


_GEN = "Generation of Augmented Images"
_PRE = "Experimentation and Results, Pre-processing of images"
_TRAIN = "Comparison of Augmentation Techniques and Model Training"
_SPEED = "speed or memory only: the outputs do not depend on it"
_SMOKE = "offline smoke profile only (tiny models, a generated image folder)"

SOURCES: dict[str, Source] = {
    # run
    "run.name": _ours("names the run; each profile sets it"),
    "run.dir": _ours("where the run's stage files live; each profile sets it"),
    "run.reports_dir": _ours("where the run's reports go; each profile sets it"),
    "run.seed": _ours("the report gives no seed; any fixed value makes the run repeatable"),
    "run.draw": _ours("0 is the first generation draw; the 'second-draw' ablation sets 1 to redo caption sampling, "
                      "candidates and selection on new random draws with the same split and training seeds"),
    "run.device": _ours("CUDA when available, else the CPU"),
    "run.min_free_gb": _ours("stops a stage before it fills the disk"),
    "run.reuse": _ours("off: a run makes its own images; backbone profiles reuse the main run's"),
    # dataset
    "dataset.source": _report(f"{_TRAIN}: 'We use the Oxford Pets and the Flowers dataset' (imagefolder is ours)",
                              "We use the Oxford Pets and the Flowers dataset"),
    "dataset.hf_id": _ours("the report names no copy of the data sets; per source, a Hub copy with the official "
                           "splits"),
    "dataset.path": _ours("imagefolder only: the user's own images"),
    "dataset.test_path": _ours("imagefolder only: the user's own test images"),
    "dataset.train_splits": _ours("the report names no split; the official training split (the Flowers profile adds "
                                  "validation, the standard protocol)"),
    "dataset.test_split": _ours("the report names no split; the official test split"),
    "dataset.test_fraction": _ours("imagefolder without a test folder: a usual 80/20 hold-out"),
    "dataset.image_column": _ours("the column name of the Hub copies"),
    "dataset.label_column": _ours("the column name of the Hub copies"),
    "dataset.class_name_case": _ours("labels read as in the report's example prompt 'A picture of Great Pyrenees'"),
    "dataset.max_per_class": _ours("no cap: the whole data set"),
    "dataset.max_test_per_class": _ours("no cap: the whole test split"),
    "dataset.min_side": _ours("images this small carry nothing to caption or generate from; skipped with a reason"),
    "dataset.max_aspect": _ours("such strips cannot be resized to the models' inputs sensibly; skipped with a reason"),
    # models
    "models.captioner": _report(f"{_GEN} §1: 'Salesforce/blip-image-captioning-base'",
                                "Salesforce/blip-image-captioning-base"),
    "models.clip": _report(f"{_GEN} §2: 'openai/clip-vit-base-patch32' (also the image-image similarity of curation "
                           "and the quality filters: our choice)", "openai/clip-vit-base-patch32"),
    "models.diffusion": _report(f"{_GEN} §6: 'the pre-trained \"stable-diffusion-v1-5\" model' (the Hub id is the "
                                "current home of that checkpoint)", 'the pre-trained "stable-diffusion-v1-5" model'),
    "models.classifier": _report(f"{_TRAIN}: 'vit-base-patch16-224-in21k' (its timm name is our mapping, from "
                                 "timm's registry metadata, not from comparing the weights)",
                                 "vit-base-patch16-224-in21k"),
    "models.controlnet": _ours("the report names ControlNet only as possible progress; Canny v1.1, trained longer on "
                               "cleaner data than v1.0"),
    # captioning
    "captioning.num_nucleus": _report(f"{_GEN} §1: 'a total of 10 captions for each algorithm' (nucleus sampling; "
                                      "the paper instead picks one strategy per data set 'based on the results of "
                                      "the validation set': the package follows the report)",
                                      "a total of 10 captions for each algorithm"),
    "captioning.num_beam": _report(f"{_GEN} §1: 'a total of 10 captions for each algorithm' (beam search)",
                                   "a total of 10 captions for each algorithm"),
    "captioning.top_p": _ours("the report gives no top_p; 0.9, a usual nucleus value (duplicate captions are kept)"),
    "captioning.num_beams": _ours("forced: returning 10 beam captions needs a beam width of at least 10; the report "
                                  "gives no width"),
    "captioning.max_new_tokens": _ours("the report gives no length; BLIP captions are short"),
    "captioning.batch_size": _ours(_SPEED),
    # similarity
    "similarity.batch_size": _ours(_SPEED),
    # generation
    "generation.generator": _report(f"{_GEN} §6: 'create augmented photos via image-to-image'",
                                    "create augmented photos via image-to-image"),
    "generation.controlnet.low_threshold": _ours("the Canny thresholds of the diffusers and ControlNet examples"),
    "generation.controlnet.high_threshold": _ours("the Canny thresholds of the diffusers and ControlNet examples"),
    "generation.controlnet.conditioning_scale": _ours("1, the weight the ControlNet was trained at"),
    "generation.prompt": _report(f"{_GEN} §3: 'Both the label of the image and the caption generated are used to "
                                 "form the prompt'", "Both the label of the image and the caption generated are "
                                 "used to form the prompt"),
    "generation.prompt_template": _report(f"{_GEN} §3: 'a fluffy white dog laying in the grass with a stuffed "
                                          "animal. A picture of Great Pyrenees'", "a fluffy white dog laying in the "
                                          "grass with a stuffed animal. A picture of Great Pyrenees"),
    "generation.caption_weight": _report("Methodology and Generation of Augmented Images §4: 'a weight of 1.50 to "
                                         "labels and 0.90 to captions' (the report's own remedy, not the "
                                         "paper's setting)", "a weight of 1.50 to labels and 0.90 to captions"),
    "generation.label_weight": _report("Methodology and Generation of Augmented Images §4: 'a weight of 1.50 to "
                                       "labels and 0.90 to captions' (the report's own remedy, not the paper's "
                                       "setting)", "a weight of 1.50 to labels and 0.90 to captions"),
    "generation.negative_prompt": _ours("the report names no negative prompt"),
    "generation.guidance.coefficients": _paper(f"as quoted by the report ({_GEN} §5: 'A guidance mapping function "
                                               "defined as in the original paper', f(s*) = -4 s*^2 + 2 s* + 1); s* "
                                               "is the raw CLIP cosine (not logit-scaled, not a softmax over the "
                                               "captions, not CLIPScore): our reading",
                                               "A guidance mapping function defined as in the original paper"),
    "generation.guidance.mode": _ours("a reading: the report never says the guidance scale equals f(s*); 'direct' "
                                      "passes f(s*) as the scale, the 'scaled-guidance' ablation 7.5 * f(s*)"),
    "generation.guidance.base_scale": _ours("Stable Diffusion's usual guidance 7.5; used by the 'scaled' and 'fixed' "
                                            "modes only"),
    "generation.strength": _report(f"{_GEN} §6: 'Gaussian noise of 0.3', read as diffusers img2img strength=0.3 "
                                   "(a reading)", "Gaussian noise of 0.3"),
    "generation.num_inference_steps": _ours("the report names no scheduler or steps; SD 1.5's own PNDM at 50 steps"),
    "generation.num_candidates": _report(f"{_PRE}: '3 images are generated per original image' (the report's own "
                                         "step, with its hand pick; not the paper's)",
                                         "3 images are generated per original image"),
    "generation.max_side": _ours("caps a source's long side at 768 px so it fits SD 1.5 and memory; an upscaled "
                                "source may reach 2 x curation.upscale_to (1,024 px at the default 512)"),
    "generation.batch_size": _ours(_SPEED),
    "generation.dtype": _ours(_SPEED + " (within floating-point tolerance)"),
    "generation.compile": _ours(_SPEED),
    "generation.compile_vae": _ours(_SPEED),
    "generation.writer_threads": _ours(_SPEED),
    "generation.png_compress_level": _ours("speed and file size only: the pixels do not depend on it"),
    # curation
    "curation.upscale_threshold": _report(f"{_PRE}: 'By upscaling images of smaller resolution', SD 'was trained on "
                                          "512 x 512 images' (the report's own remedy; the 512 px short-side "
                                          "threshold is our reading)", "By upscaling images of smaller resolution"),
    "curation.upscale_to": _ours("upscaled to the threshold's short side"),
    "curation.error_analysis_sample": _ours("5 small sources per class suffice for the error analysis, since every "
                                            "small source is regenerated upscaled (our reading: the report does not "
                                            "say how many images it regenerated)"),
    "curation.select": _ours("most_similar: our automatic reading of the report's hand pick ('select the best "
                             "image out of the 3'; it reports the cosine rising 'by around 19x' after upscaling and "
                             "the pick together); most_diverse_consistent is a hypothesis, run as an ablation"),
    "curation.min_similarity": _ours("most_diverse_consistent's floor (a hypothesis): the median similarity of the "
                                     "competing candidates"),
    "curation.batch_size": _ours(_SPEED),
    # filters (beyond the paper)
    "filters.apply": _ours("off: the report applies no filter (it suggests a similarity threshold and a real-vs-"
                             "fake classifier under Possible Improvements; the label filter is ours)"),
    "filters.source_similarity_threshold": _ours("the report's suggested threshold has no value; None: a quantile of "
                                                 "the observed source similarities"),
    "filters.source_similarity_quantile": _ours("drops the 5 % candidates least similar to their sources"),
    "filters.class_noun": _ours("none: plain 'a photo of a <label>.' class prompts"),
    "filters.detector_drop_fraction": _ours("drops the 10 % most surely generated candidates"),
    "filters.detector_folds": _ours("5-fold out-of-fold probabilities, a usual value"),
    # training
    "training.methods": _report(f"{_TRAIN}: 'The augmentation techniques compared are as follows': Baseline, CutMix, "
                                "RandAugment and SGID", "The augmentation techniques compared are as follows"),
    "training.sgid_proportions": _report(f"{_TRAIN}: 'different proportion of generated images (25% till 100%)'",
                                         "different proportion of generated images (25% till 100%)"),
    "training.filtered_proportions": _ours("the filtered set at its full size"),
    "training.combined_proportions": _ours("SGID's full set combined with CutMix / RandAugment"),
    "training.backbones": _report(f"{_TRAIN}: one backbone, 'vit-base-patch16-224-in21k' (empty: models.classifier "
                                  "with training.*)", "vit-base-patch16-224-in21k"),
    "training.backbones[].name": _ours("names a listed backbone's runs; each profile sets it"),
    "training.backbones[].label": _ours("the name in tables; defaults to name"),
    "training.backbones[].model": _ours("no default; the backbone profiles list the abstract's three backbones, whose "
                                        "sizes the abstract does not give: ResNet-50, ViT-B/16 and CLIP-ViT B/16 with "
                                        "the laion2b checkpoint are our choice"),
    "training.backbones[].pretrained": _ours("pretrained weights unless a backbone trains from scratch"),
    "training.backbones[].optimizer": _report(f"{_TRAIN}: 'All experiments utilize the Adam optimizer'",
                                              "All experiments utilize the Adam optimizer"),
    "training.backbones[].lr": _ours("unset: training.lr"),
    "training.backbones[].momentum": _ours("SGD's usual momentum; used by sgd only"),
    "training.backbones[].weight_decay": _ours("the report names none"),
    "training.backbones[].schedule": _report(f"{_TRAIN}: 'a constant learning rate'", "a constant learning rate"),
    "training.backbones[].warmup_epochs": _ours("none: the report's constant learning rate mentions no warm-up"),
    "training.backbones[].epochs": _ours("unset: training.epochs"),
    "training.backbones[].batch_size": _ours("unset: training.batch_size"),
    "training.backbones[].eval_every": _ours("unset: training.eval_every"),
    "training.backbones[].image_size": _ours("unset: training.image_size"),
    "training.backbones[].source": _ours("free text naming where a listed recipe comes from"),
    "training.seeds": _ours("the report does not say how many runs; three seeds give a paired interval"),
    "training.epochs": _ours("the report gives no epoch count; 10, the same for every method"),
    "training.batch_size": _ours("the report gives no batch size; 32, the same for every method"),
    "training.eval_batch_size": _ours(_SPEED),
    "training.eval_every": _ours("tests after every epoch for the learning curves; the reported accuracy is the last"),
    "training.lr": _report(f"{_TRAIN}: 'a constant learning rate of 0.0001'", "a constant learning rate of 0.0001"),
    "training.image_size": _ours("the classifier's pretrained input size (224 for ViT-B/16)"),
    "training.cutmix_alpha": _report(f"{_TRAIN}: CutMix 'with alpha = 1'", "with alpha = 1"),
    "training.cutmix_prob": _report(f"{_TRAIN}: 'a CutMix probability of 0.5'", "a CutMix probability of 0.5"),
    "training.randaugment_num_ops": _report(f"{_TRAIN}: RandAugment's 'default parameters (N = 2, M = 9)'",
                                           "default parameters (N = 2, M = 9)"),
    "training.randaugment_magnitude": _report(f"{_TRAIN}: RandAugment's 'default parameters (N = 2, M = 9)'",
                                             "default parameters (N = 2, M = 9)"),
    "training.num_workers": _ours("speed only, but not output-neutral: each worker seeds its own RandAugment draws, so "
                                "a different count gives different augmentations"),
    "training.jobs": _ours(_SPEED),
    "training.amp": _ours("speed and memory, but not output-neutral: mixed precision changes the training numerics, "
                        "so accuracies differ slightly from a float32 run"),
    "training.equal_steps": _ours("off: every method trains the same epochs, so SGID at 100 % gets twice the "
                                  "Baseline's steps; the 'sgid-equal-steps' ablation sets it on"),
    "training.deterministic": _ours("off: a GPU's fastest kernels (cuDNN autotuning, atomics) reorder float sums, "
                                    "so a GPU rerun matches in accuracy within seed noise, not byte for byte; its "
                                    "cost on a GPU is unmeasured (docs/GPU.md)"),
    "training.method_proportions": _ours("one synthetic image per real image, as SGID at 100 %: the methods compared "
                                         "at an equal number of synthetic images (DA-Fusion's first of its M)"),
    **SAMPLER_SOURCES,  # generation.sampler and its LCM-LoRA settings, declared beside them (config.samplers)
    **METHOD_SOURCES,  # the compared augmentations' settings, declared beside them (config.methods)
    # references
    "references.tables": _ours("none by default; the Pets and Flowers profiles list the report's Tables 1 and 2: "
                                "its own numbers and its 'Benchmark in Paper' column"),
    "references.tables[].label": _ours("names a reference column; each profile sets it"),
    "references.tables[].source": _ours("where the reference numbers come from; each profile sets it"),
    "references.tables[].values": _ours("the reference numbers; each profile copies them from its source"),
    "references.tables[].backbone": _ours("unset: the first backbone"),
    "references.tables[].dataset": _ours("unset: tied to no data set, so no per-data-set paper gain is shown"),
    "references.tables[].assumed_backbone": _ours("unset: the source names its backbone, or none is assumed"),
    "references.headline": _ours("none by default; the backbone profiles give the abstract's gains per backbone"),
    "references.headline.label": _ours("names the headline column; each profile sets it"),
    "references.headline.source": _ours("where the headline gains come from; each profile sets it"),
    "references.headline.gains": _ours("the abstract's gains ('1.72%' read as points: a reading); each profile "
                                    "copies them"),
    "references.grid_examples": _ours("enough examples per image grid to see a pattern"),
    "references.gpu_rates": _ours("none by default (no projection rather than another machine's numbers); the methods "
                               "profiles name the H200 report checked in under docs/gpu/"),
    # ablations
    "ablations": _ours("none by default; the *_ablations.yaml profiles list the variants"),
    "ablations[].name": _ours("names a variant's run directory; each profile sets it"),
    "ablations[].label": _ours("unset: the variant's name"),
    "ablations[].set": _ours("the variant's overrides; each profile sets them"),
    # smoke
    "smoke.build_models": _ours(_SMOKE),
    "smoke.build_dataset": _ours(_SMOKE),
    "smoke.classes": _ours(_SMOKE + ": one class from each data set and a second breed"),
    "smoke.images_per_class": _ours(_SMOKE),
    "smoke.tiny_backbones": _ours(_SMOKE),
}

_ITEM = re.compile(r"\[[^\]]*\]")


def source_of(key: str) -> Source:
    """The source of one setting; ``key`` is a SOURCES key or a settings-table one (``training.backbones[x].lr``)."""
    normal = _ITEM.sub("[]", key)
    if normal in SOURCES:
        return SOURCES[normal]
    close = difflib.get_close_matches(normal, list(SOURCES), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"{key!r} is not a setting of the params schema (sgid_utils.params.schema.Params){hint}")
