"""Which params (and which version of the code) a stage's outputs depend on.

A stage folder records its fingerprint in ``_params.json`` and refuses, with a clear
message, to mix in outputs of other params (``core.files.pin_fingerprint``). A stage's
fingerprint holds its own keys and those of every upstream stage (the chain comes
from the registry), so recomputing captions with new settings invalidates the
similarity scores made from the old ones.
"""

from __future__ import annotations

import json
from typing import Any

from sgid_utils.core.files import read_fingerprint
from sgid_utils.core.registry import CODE_VERSIONS, STAGES, get, upstream_closure
from sgid_utils.core.rundir import RunDir
from sgid_utils.errors import StaleOutputsError
from sgid_utils.params.backbones import backbones
from sgid_utils.params.methods import AUGMENTATIONS
from sgid_utils.params.schema import Params
from sgid_utils.params.training import INHERITED, BackboneParams

# Keys that change only speed (batch sizes, compilation) or only how much is done (which methods, seeds and
# proportions to train): changing them reuses finished work. Listed backbones are recorded one by one
# (``backbone_fingerprint``), so adding one or changing one's recipe leaves the others' finished runs valid.
NOT_IN_FINGERPRINT = {
    "captioning.batch_size", "similarity.batch_size", "curation.batch_size", "generation.batch_size",
    "generation.compile", "generation.compile_vae", "generation.png_compress_level",
    "generation.writer_threads",
    "training.eval_batch_size", "training.jobs", "training.methods", "training.seeds",
    "training.sgid_proportions", "training.filtered_proportions", "training.combined_proportions",
    "training.method_proportions", "training.backbones",
}
# Code versions (``CODE_VERSIONS``, per params key) and the key that names each stage's code (``CODE_VERSION_KEY``)
# are declared on the stages' registry entries (``core.registry``): bump ``code_version`` there.
# Per backbone, what names it but cannot change its results.
COSMETIC_BACKBONE_KEYS = ("label", "source")


def unused_keys(params: Params, stage: str | None = None) -> set[str]:
    """Keys that cannot change these params' outputs: the ControlNet's under the img2img generator (and the generator
    itself at img2img, the value every run had before it existed, so that finished runs stay valid); likewise
    ``generation.sampler`` at its default and the LCM-LoRA's settings under it; and, when
    ``training.backbones`` lists the classifiers, ``models.classifier`` and the ``training.*`` fields a backbone
    inherits (in each backbone's own record, resolved: retuning one backbone leaves the others' runs valid).

    Likewise ``run.draw`` at 0 and ``training.equal_steps`` and ``training.deterministic`` at false, the behaviour of
    every run before they existed: recorded only when set, so finished runs stay valid (and a run directory records
    ``training.deterministic`` only when every training run in it was), and Real Guidance's M and p (its recipe's).
    So is the params section of a compared
    augmentation (``params.methods``: ``real_guidance``, ``da_fusion``) that ``training.methods`` does not train,
    except in its own stages' fingerprints."""
    keys = set() if params.generation.generator == "controlnet" else {"models.controlnet", "generation.controlnet",
                                                                      "generation.generator"}
    keys |= {"generation.sampler", "generation.lcm"} if params.generation.sampler == "default" else set()
    listed = {"models.classifier", *(f"training.{k}" for k in INHERITED)} if params.training.backbones else set()
    defaults = ({"run.draw"} if params.run.draw == 0 else set()) | {
        f"training.{k}" for k in ("equal_steps", "deterministic") if not getattr(params.training, k)}
    trained = {a.section for a in AUGMENTATIONS if a.method in params.training.methods}
    untrained = {a.section for a in AUGMENTATIONS if a.section and a.section not in trained and stage not in a.stages}
    # Real Guidance's M and p (added after its stage): its stage adds the m-th images as items of their own (the
    # first's seed does not depend on M), and training records them only away from their defaults, as run.draw
    rg = params.real_guidance
    rg_recipe = {f"real_guidance.{k}" for k in ("num_synthetic", "synthetic_probability")
                 if stage == "real_guidance" or getattr(rg, k) == type(rg).model_fields[k].default}
    return keys | listed | defaults | untrained | rg_recipe


def backbone_fingerprint(bb: BackboneParams) -> dict[str, Any]:
    """What a listed backbone's runs depend on beyond the training stage's fingerprint: its resolved recipe (without
    the label and source, which name it but cannot change a result). Recorded beside its runs."""
    return {k: v for k, v in bb.model_dump(mode="json").items() if k not in COSMETIC_BACKBONE_KEYS}


def stage_keys(stage: str, upstream: tuple[str, ...] | None = None) -> list[str]:
    """The params keys of ``stage`` and of its upstream chain (or of the chain through ``upstream``).

    A key inside a section that is itself a key (``curation.upscale_to`` beside ``curation``) is dropped.
    """
    chain = (upstream_closure(stage) if upstream is None
             else [n for u in upstream for n in upstream_closure(u)] + [stage])
    keys = list(dict.fromkeys(k for name in chain for k in get(name).keys))
    return [k for k in keys if not any(k.startswith(f"{other}.") for other in keys)]


def baseline_view(recorded: dict[str, Any]) -> dict[str, Any]:
    """A train-stage fingerprint as a Baseline run sees it: without ``training.equal_steps``, since a Baseline trains
    for its own number of steps either way, nor DA-Fusion's replacement probability, which no Baseline uses."""
    recorded = {k: v for k, v in recorded.items() if k != "da_fusion.synthetic_probability"}  # DA-Fusion's recipe's
    training = recorded.get("training")
    return {**recorded, "training": {k: v for k, v in training.items() if k != "equal_steps"}} if isinstance(
        training, dict) else recorded


def baseline_fingerprint(params: Params) -> dict[str, Any]:
    """What a Baseline run depends on: the training stage's keys over the data stage alone (it uses no generated image),
    seen through ``baseline_view``."""
    return baseline_view(fingerprint(params, "training", upstream=("data",)))


def fingerprint(params: Params, stage: str, upstream: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The params that determine ``stage``'s output, upstream stages' included (recorded beside it).

    ``upstream`` replaces the stage's own upstream chain: the Baseline training runs use no generated
    image, so their fingerprint is ``fingerprint(params, "training", upstream=("data",))``.
    """
    data = params.model_dump(mode="json", exclude={"source_file"})
    out: dict[str, Any] = {}
    left_out = NOT_IN_FINGERPRINT | unused_keys(params, stage)
    for dotted in stage_keys(stage, upstream):
        if any(dotted == k or dotted.startswith(f"{k}.") for k in left_out):  # a left-out section: its keys too
            continue
        node: Any = data
        for part in dotted.split("."):
            node = node[part]
        if isinstance(node, dict):
            node = {k: v for k, v in node.items() if f"{dotted}.{k}" not in left_out}
        out[dotted] = node
        if dotted in CODE_VERSIONS:
            out[f"{dotted}.code_version"] = CODE_VERSIONS[dotted]
    return out


# Where a run's data live, not what they are: a run directory checked from another mount differs here alone.
PATH_KEYS = ("dataset.path", "dataset.test_path")


def _leaves(node: Any, prefix: str) -> dict[str, Any]:
    """A fingerprint value as dotted leaves (``generation.guidance.mode``), for a message that names the key."""
    if isinstance(node, dict):
        return {k: v for name, value in node.items() for k, v in _leaves(value, f"{prefix}.{name}").items()}
    return {prefix: node}


def recorded_differences(params: Params) -> list[str]:
    """Each params key on which ``params`` and the run in ``run.dir`` disagree, as '<key>: the run used X
    (<file>), these params give Y'. Only keys that change outputs are compared (what each stage folder and each
    listed backbone recorded); batch sizes, seeds, methods and data paths are not."""
    run = RunDir.of(params)
    pairs = [(run.fingerprint_file(s.name), fingerprint(params, s.name)) for s in STAGES if s.keys]
    pairs += [(run.backbone_fingerprint(bb.name), {f"training.backbones[{bb.name}]": backbone_fingerprint(bb)})
              for bb in backbones(params) if bb.name]
    out: dict[str, str] = {}
    for file, now in pairs:
        if not file.exists():
            continue
        recorded = read_fingerprint(file)
        if file.name.startswith("_backbone-"):
            recorded = {next(iter(now)): recorded}
        ran = {k: v for key, value in recorded.items() for k, v in _leaves(value, key).items()}
        given = {k: v for key, value in json.loads(json.dumps(now, default=str)).items()
                 for k, v in _leaves(value, key).items()}
        for key in sorted(set(ran) | set(given)):
            # a key left out of these params' fingerprint (unused, or at its old default) is compared by its value
            mine = given[key] if key in given else _value(params, key)
            if key not in PATH_KEYS and key not in out and ran.get(key, "unset") != mine:
                out[key] = (f"{key}: the run used {ran.get(key, 'unset')!r} ({file.relative_to(run.root)}), "
                            f"these params give {mine!r}")
    return list(out.values())


def _value(params: Params, dotted: str) -> Any:
    """A params key's value by its dotted name ('unset' where the params have no such key, e.g. a backbone's)."""
    node: Any = params.model_dump(mode="json", exclude={"source_file"})
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return "unset"
        node = node[part]
    return node


def check_recorded(params: Params, command: str) -> None:
    """Refuse to describe a run (``report``, ``export``, ``notebooks``) with params that did not make it: a page that
    states other settings than its numbers' would look authoritative and be wrong."""
    differences = recorded_differences(params)
    if differences:
        run_dir = params.run.dir
        raise StaleOutputsError(
            f"{command}: the params given do not match the run in {run_dir}, which was made with other settings: "
            + "; ".join(differences)
            + f". Use the run's own params (--run-dir {run_dir} without --params), or give its values with "
              "--set KEY=VALUE.")
