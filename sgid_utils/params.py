"""The typed params schema shared by every stage, notebook and the command line.

One YAML file per data set (``params/*.yaml``). An unknown key, a wrong type or
an out-of-range value stops the run before any model loads, with a message that
names the file, the key and what is allowed. Relative paths in a params file are
resolved against the folder that holds the file, so a params file means the same
thing whether papermill, nbval or a cluster job reads it.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ParamsError(ValueError):
    """A params file (or override) that cannot be used; the message says why and where."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunParams(_Section):
    name: str = Field(min_length=1, description="Run name: reports land in reports_dir, stage files in dir.")
    dir: Path = Field(description="Run directory holding every stage's files (put it on Google Drive on Colab).")
    reports_dir: Path = Field(description="Where executed notebooks, figures and tables are written.")
    seed: int = Field(0, ge=0, description="Run seed; every per-item seed derives from it.")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'.")
    min_free_gb: float = Field(2.0, ge=0, description="Stages refuse to start with less free disk than this in run.dir.")


class DatasetParams(_Section):
    source: Literal["pets", "flowers", "imagefolder"]
    hf_id: str | None = Field(None, description="Hugging Face data set id or local folder; defaults per source.")
    path: Path | None = Field(None, description="imagefolder: <path>/<class>/*.jpg training images.")
    test_path: Path | None = Field(None, description="imagefolder: optional separate <test_path>/<class>/ folder.")
    train_splits: list[str] = Field(default_factory=lambda: ["train"], min_length=1)
    test_split: str = "test"
    test_fraction: float = Field(0.2, gt=0, lt=1, description="imagefolder without test_path: held-out share per class.")
    image_column: str = "image"
    label_column: str = "label"
    class_name_case: Literal["title", "keep"] = "title"
    max_per_class: int | None = Field(None, ge=1, description="Cap on training images per class (quick runs).")
    max_test_per_class: int | None = Field(None, ge=1)
    min_side: int = Field(16, ge=1, description="Images whose short side is below this are skipped as unusable.")
    max_aspect: float = Field(8.0, ge=1, description="Images more elongated than this (long/short side) are skipped.")

    @model_validator(mode="after")
    def _needs_path(self) -> "DatasetParams":
        if self.source == "imagefolder" and self.path is None:
            raise ValueError("dataset.source is 'imagefolder', so dataset.path must name the image folder")
        return self


class ModelParams(_Section):
    captioner: str = "Salesforce/blip-image-captioning-base"
    clip: str = "openai/clip-vit-base-patch32"
    diffusion: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    classifier: str = Field(
        "vit_base_patch16_224.orig_in21k",
        description="timm model name (pretrained from the hub) or 'local-dir:FOLDER'.",
    )


class CaptioningParams(_Section):
    num_nucleus: int = Field(10, ge=0)
    num_beam: int = Field(10, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    num_beams: int = Field(10, ge=1, description="Beam width; must be >= num_beam (beams returned).")
    max_new_tokens: int = Field(30, ge=1)
    batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _beams(self) -> "CaptioningParams":
        if self.num_beam > self.num_beams:
            raise ValueError(f"captioning.num_beam ({self.num_beam}) cannot exceed captioning.num_beams ({self.num_beams})")
        if self.num_nucleus + self.num_beam == 0:
            raise ValueError("captioning needs at least one caption per image (num_nucleus + num_beam > 0)")
        return self


class SimilarityParams(_Section):
    batch_size: int = Field(64, ge=1)


class GuidanceParams(_Section):
    """f(s*) = a*s*^2 + b*s* + c, the paper's mapping from caption similarity to guidance."""

    coefficients: tuple[float, float, float] = (-4.0, 2.0, 1.0)
    mode: Literal["direct", "scaled", "fixed"] = Field(
        "direct",
        description="direct: guidance = f(s*); scaled: guidance = base_scale * f(s*); fixed: guidance = base_scale.",
    )
    base_scale: float = Field(7.5, ge=0)


class GenerationParams(_Section):
    prompt: Literal["sgid", "label_only", "caption_only"] = Field(
        "sgid", description="sgid: weighted caption + label; label_only: 'A picture of <label>'; caption_only: '<c*>'."
    )
    prompt_template: str = "{caption}. A picture of {label}"
    caption_weight: float = Field(0.9, gt=0)
    label_weight: float = Field(1.5, gt=0)
    negative_prompt: str = ""
    guidance: GuidanceParams = Field(default_factory=GuidanceParams)
    strength: float = Field(0.3, gt=0, le=1)
    num_inference_steps: int = Field(50, ge=1)
    num_candidates: int = Field(3, ge=1, description="k candidates per source image.")
    max_side: int = Field(768, ge=64, description="Sources larger than this (long side) are downscaled for the model.")
    batch_size: int | None = Field(None, ge=1, description="Sources per denoising loop; None: from free GPU memory on CUDA (halved on out-of-memory), 1 (the pipeline itself) on the CPU.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field("auto", description="auto: fp16 on CUDA, fp32 on CPU.")
    compile: bool = Field(False, description="torch.compile the UNet on CUDA (pays off on long runs; recompiles per input size).")

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, v: str) -> str:
        if "{label}" not in v:
            raise ValueError("generation.prompt_template must contain {label}")
        return v


class CurationParams(_Section):
    upscale_threshold: int = Field(512, ge=1, description="Sources with a short side below this are upscaled and regenerated.")
    upscale_to: int | None = Field(None, ge=1, description="Target short side when upscaling; defaults to upscale_threshold.")
    batch_size: int = Field(64, ge=1)


class QualityParams(_Section):
    """Quality control of generated images (beyond the paper): filters applied before best-of-k."""

    filters: list[Literal["similarity", "label", "detector"]] = Field(
        default_factory=list, description="Filters in the order they apply; the filtered set trains as 'sgid_filtered'."
    )
    similarity_threshold: float | None = Field(None, ge=-1, le=1, description="None: the similarity_quantile of the observed scores.")
    similarity_quantile: float = Field(0.05, ge=0, lt=1)
    class_noun: str | None = Field(None, description="Label prompts read 'a photo of a <label>, a type of <noun>.'")
    detector_drop_fraction: float = Field(0.1, ge=0, lt=1, description="Share of the most surely fake candidates the detector drops.")
    detector_folds: int = Field(5, ge=2)

    @field_validator("filters")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"each filter may appear once; got {v}")
        return v


class TrainingParams(_Section):
    methods: list[Literal["baseline", "cutmix", "randaugment", "sgid", "sgid_filtered"]] = Field(
        default_factory=lambda: ["baseline", "cutmix", "randaugment", "sgid"], min_length=1
    )
    sgid_proportions: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    filtered_proportions: list[float] = Field(default_factory=lambda: [1.0], description="Proportions for sgid_filtered.")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    eval_every: int = Field(1, ge=1, description="Evaluate on the test split every N epochs (and always after the last).")
    lr: float = Field(1e-4, gt=0)
    image_size: int | None = Field(None, ge=8, description="Defaults to the classifier's pretrained input size.")
    cutmix_alpha: float = Field(1.0, gt=0)
    cutmix_prob: float = Field(0.5, ge=0, le=1)
    randaugment_num_ops: int = Field(2, ge=0)
    randaugment_magnitude: int = Field(9, ge=0, le=30)
    num_workers: int = Field(2, ge=0)
    amp: bool = Field(True, description="Mixed precision on CUDA (ignored on the CPU).")

    @field_validator("sgid_proportions", "filtered_proportions")
    @classmethod
    def _props(cls, v: list[float]) -> list[float]:
        for p in v:
            if not 0 <= p <= 1:
                raise ValueError(f"every SGID proportion must lie in [0, 1]; got {p}")
        return v


class ReferenceTable(_Section):
    label: str
    source: str
    values: dict[str, float]


class ResultsParams(_Section):
    references: list[ReferenceTable] = Field(default_factory=list)
    grid_examples: int = Field(6, ge=1)


class AblationParams(_Section):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", description="Names the variant's run directory <run.dir>-<name>.")
    set: dict[str, Any] = Field(description="Params overrides, dotted keys as with --set, e.g. generation.prompt: label_only.")


class SmokeParams(_Section):
    """Offline smoke profile: build tiny random models and a small image folder first."""

    build_models: bool = False
    build_dataset: bool = False
    classes: list[str] = Field(default_factory=lambda: ["great_pyrenees", "Maine_Coon", "pink primrose"])
    images_per_class: int = Field(6, ge=2)


class Params(_Section):
    run: RunParams
    dataset: DatasetParams
    models: ModelParams = Field(default_factory=ModelParams)
    captioning: CaptioningParams = Field(default_factory=CaptioningParams)
    similarity: SimilarityParams = Field(default_factory=SimilarityParams)
    generation: GenerationParams = Field(default_factory=GenerationParams)
    curation: CurationParams = Field(default_factory=CurationParams)
    quality: QualityParams = Field(default_factory=QualityParams)
    training: TrainingParams = Field(default_factory=TrainingParams)
    results: ResultsParams = Field(default_factory=ResultsParams)
    smoke: SmokeParams = Field(default_factory=SmokeParams)
    ablations: list[AblationParams] = Field(default_factory=list, description="Variants run by 'run ablations'.")

    source_file: Path | None = Field(None, exclude=True, description="The params file this was read from.")

    @model_validator(mode="after")
    def _filtered_needs_filters(self) -> "Params":
        if "sgid_filtered" in self.training.methods and not self.quality.filters:
            raise ValueError("training.methods lists sgid_filtered but quality.filters is empty: name at least one filter")
        return self

    def stage_fingerprint(self, stage: str) -> dict[str, Any]:
        """The params that determine a stage's output, its upstream stages' included (recorded beside
        it to detect stale files).

        Keys that change only speed (inference batch sizes, compilation) or only how much is done
        (which methods, seeds and proportions to train) are left out: changing them reuses finished work.
        """
        data = self.model_dump(mode="json", exclude={"source_file"})
        out: dict[str, Any] = {}
        for dotted in STAGE_KEYS[stage]:
            node: Any = data
            for part in dotted.split("."):
                node = node[part]
            if isinstance(node, dict):
                node = {k: v for k, v in node.items() if f"{dotted}.{k}" not in _NOT_IN_FINGERPRINT}
            out[dotted] = node
            if dotted in CODE_VERSIONS:
                out[f"{dotted}.code_version"] = CODE_VERSIONS[dotted]
        return out


_NOT_IN_FINGERPRINT = {
    "captioning.batch_size", "similarity.batch_size", "curation.batch_size", "generation.batch_size",
    "generation.compile", "training.eval_batch_size", "training.methods", "training.seeds",
    "training.sgid_proportions", "training.filtered_proportions",
}
# Bumped when a section's code gives other outputs for the same params, so that a run dir keeps one version's files.
# captioning 2: nucleus sampling batched, each image's tokens drawn from its own seed (SeededNucleusSampler).
CODE_VERSIONS = {"captioning": 2}
# Each stage's output depends on its own keys and on every upstream stage's.
STAGE_KEYS: dict[str, tuple[str, ...]] = {"data": ("dataset", "run.seed")}
STAGE_KEYS["captions"] = STAGE_KEYS["data"] + ("models.captioner", "captioning")
STAGE_KEYS["similarity"] = STAGE_KEYS["captions"] + ("models.clip",)
STAGE_KEYS["generate"] = STAGE_KEYS["similarity"] + ("models.diffusion", "generation")
STAGE_KEYS["generate_upscaled"] = STAGE_KEYS["generate"] + ("curation.upscale_threshold", "curation.upscale_to")
STAGE_KEYS["curate"] = STAGE_KEYS["generate"] + ("curation", "quality")
STAGE_KEYS["train"] = STAGE_KEYS["curate"] + ("models.classifier", "training")
STAGE_KEYS["train_baseline"] = STAGE_KEYS["data"] + ("models.classifier", "training")  # Baseline uses no generated image
_PATH_KEYS = ("run.dir", "run.reports_dir", "dataset.path", "dataset.test_path")
_ENV_OVERRIDES = {"SGID_RUN_DIR": "run.dir", "SGID_REPORTS_DIR": "run.reports_dir"}


def _suggest(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return []
    return [k for k in model.model_fields if k != "source_file"]


def _format_errors(err: ValidationError, where: str) -> str:
    lines = [f"Invalid params in {where}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(Params, e["loc"])
            lines.append(
                f"  - unknown key '{key}'.{_suggest(str(e['loc'][-1]), allowed)} Allowed here: {', '.join(allowed)}"
            )
        elif e["type"] == "missing":
            lines.append(f"  - missing required key '{key}'")
        else:
            got = e.get("input")
            lines.append(f"  - '{key}': {e['msg']} (got {got!r})")
    return "\n".join(lines)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ParamsError(f"Invalid override in {where}: '{dotted}' descends into '{part}', which is not a section")
        node = nxt
    node[parts[-1]] = value


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _with_base(data: dict[str, Any], file: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """``extends: other.yaml`` (a file in the same folder): this file's sections merge over that one's."""
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_file = (file.resolve().parent / str(parent)).resolve()
    if parent_file.parent != file.resolve().parent or not parent_file.is_file() or parent_file in seen:
        raise ParamsError(f"Invalid params in {file}: 'extends' must name another params file in the same folder; got {parent!r}")
    try:
        base = yaml.safe_load(parent_file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"Params file {parent_file} (extended by {file}) is not valid YAML: {exc}") from None
    return _merge(_with_base(base, parent_file, seen + (parent_file,)), data)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key.path=value`` (value in YAML syntax: 3, 0.5, true, [0, 1], text)."""
    if "=" not in text:
        raise ParamsError(f"Invalid override '{text}': expected key.path=value, e.g. generation.strength=0.3")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def load_params(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> Params:
    """Read, override and validate a params file; relative paths resolve against its folder.

    The environment variables SGID_RUN_DIR and SGID_REPORTS_DIR, when set, replace
    run.dir and run.reports_dir (tests and Colab use them to redirect a whole run).
    """
    file = Path(path)
    if not file.is_file():
        raise ParamsError(f"Params file not found: {file} (cwd {Path.cwd()}). The shipped ones are in params/.")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"Params file {file} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"Params file {file} must hold a mapping of sections (run:, dataset:, ...)")
    data = _with_base(data, file)
    base = file.resolve().parent
    for env, key in _ENV_OVERRIDES.items():  # the environment first: explicit overrides win over it
        if os.environ.get(env):
            _set_dotted(data, key, str(Path(os.environ[env]).resolve()), f"environment variable {env}")
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value, f"{file} (override {key}={value!r})")
    try:
        params = Params.model_validate(data)
    except ValidationError as exc:
        raise ParamsError(_format_errors(exc, str(file))) from None
    for dotted in _PATH_KEYS:
        section, key = dotted.split(".")
        value = getattr(getattr(params, section), key)
        if value is not None and not Path(value).is_absolute():
            setattr(getattr(params, section), key, (base / value).resolve())
    params.models = params.models.model_copy(
        update={k: _resolve_model_ref(v, base) for k, v in params.models.model_dump().items()}
    )
    params.source_file = file.resolve()
    ds = params.dataset
    if ds.source == "imagefolder" and not params.smoke.build_dataset:
        for key, folder in (("dataset.path", ds.path), ("dataset.test_path", ds.test_path)):
            if folder is not None and not Path(folder).is_dir():
                raise ParamsError(f"Invalid params in {file}: '{key}' names a folder that does not exist: {folder}")
    return params


def _resolve_model_ref(ref: str, base: Path) -> str:
    """A model reference that looks like a relative path ('./x', '../x') becomes absolute; hub ids stay."""
    prefix = "local-dir:" if ref.startswith("local-dir:") else ""
    body = ref[len(prefix):]
    if body.startswith(("./", "../")):
        return prefix + str((base / body).resolve())
    return ref
