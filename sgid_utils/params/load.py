"""Loading a params file: ``extends:``, environment redirects, ``--set`` overrides, validation, paths.

One YAML file per data set (``params/*.yaml``), validated against ``sgid_utils.params.schema``.
Relative paths in a params file are resolved against the folder that holds the file,
so a params file means the same thing whether papermill, nbval or a cluster job reads it.
An ablation variant's params are the base file loaded again with the variant's overrides
(``core.sharing.variant_params``, which places it in the run directory).
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sgid_utils.errors import ParamsError
from sgid_utils.params.schema import Params

__all__ = ["RENAMED_KEYS", "RENAMED_VALUES", "Params", "ParamsError", "load_params", "load_run_params",
           "parse_override", "renamed_key", "upgrade_fingerprint", "upgrade_keys"]

# The shipped profiles (params/ beside the package), which ``extends:`` may name from anywhere.
SHIPPED_PARAMS = Path(__file__).resolve().parents[2] / "params"
_PATH_KEYS = ("run.dir", "run.reports_dir", "run.reuse", "dataset.path", "dataset.test_path", "references.gpu_rates")
_ENV_OVERRIDES = {"SGID_RUN_DIR": "run.dir", "SGID_REPORTS_DIR": "run.reports_dir"}
# The params a run records in its directory as each stage starts (``core.rundir.RunDir.params_copy``), which
# ``--run-dir`` alone reads.
RUN_PARAMS_FILE = "params.yaml"


# Params keys renamed since runs were made (old dotted key -> new), the one table of old names: params files, their
# ``extends:`` parents, ``--set`` overrides and ablation ``set:`` keys still load under the old names with a one-line
# deprecation message, and recorded fingerprints are read under the new ones (``core.files.read_fingerprint``), so
# finished runs stay valid. A field renamed inside a renamed section comes before its section, under both the
# section's old name and its new one (each old key then gives one message, whichever its section's name).
RENAMED_KEYS = {
    "results.references": "references.tables",  # the published tables a run is set beside
    "results": "references",  # the section: the published numbers (the results stage keeps its name)
    "quality.filters": "filters.apply",  # the filters in the order they apply
    # the filter of a candidate's similarity to its source (``similarity`` is the stage scoring captions)
    "quality.similarity_threshold": "filters.source_similarity_threshold",
    "quality.similarity_quantile": "filters.source_similarity_quantile",
    "filters.similarity_threshold": "filters.source_similarity_threshold",
    "filters.similarity_quantile": "filters.source_similarity_quantile",
    "quality": "filters",  # the section read by curate (the quality stage keeps its name)
}
# Values renamed since runs were made (today's dotted key -> {old value: new}), in a list or alone; read wherever the
# keys are, after them, with a one-line message.
RENAMED_VALUES = {
    "filters.apply": {"similarity": "source_similarity"},  # the filter, as its keys above
}


def renamed_key(dotted: str) -> str:
    """``dotted`` under today's names (``results.references.0`` -> ``references.tables.0``); unchanged if current."""
    for old, new in RENAMED_KEYS.items():
        if dotted == old or dotted.startswith(f"{old}."):
            return new + dotted[len(old):]
    return dotted


def _deprecated(old: str, where: str) -> None:
    print(f"[sgid] deprecated params key '{old}' in {where}: it is now '{renamed_key(old)}' (the old name still "
          "loads; rename it)", file=sys.stderr)


def upgrade_keys(data: dict[str, Any], where: str | None = None) -> dict[str, Any]:
    """A params mapping (sections of keys) with old key names moved to today's, before validation; each old key
    found is reported once (``where``: the file; None: silently, for a recorded fingerprint)."""
    out = dict(data)
    for old, new in RENAMED_KEYS.items():
        *old_parents, old_key = old.split(".")  # a section, or a field of one
        parent = out
        for part in old_parents:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or old_key not in parent:
            continue
        value = (parent := dict(parent)).pop(old_key)
        if old_parents:
            out[old_parents[0]] = parent
        else:
            out = parent
        if where is not None and value != {}:  # a section emptied by its field's rename was reported with it
            _deprecated(old, where)
        *new_parents, new_key = new.split(".")
        node = out
        for part in new_parents:
            node[part] = dict(node.get(part) or {})
            node = node[part]
        node[new_key] = _merge(value, node[new_key]) if isinstance(value, dict) and isinstance(
            node.get(new_key), dict) else value
    for dotted, renames in RENAMED_VALUES.items():
        *parents, key = dotted.split(".")
        node = out
        for part in parents:  # copied on the way down: the caller's mapping stays as it was
            if not isinstance(node.get(part), dict):
                break
            node[part] = dict(node[part])
            node = node[part]
        else:
            if key in node:
                node[key] = _renamed_value(dotted, node[key], renames, where)
    return out


def _renamed_value(dotted: str, value: Any, renames: dict[str, str], where: str | None) -> Any:
    """``value`` (one, or a list) with its old values renamed; each old one reported (``where``: None, silently)."""
    values = value if isinstance(value, list) else [value]
    for old in [v for v in values if isinstance(v, str) and v in renames and where is not None]:
        print(f"[sgid] deprecated params value '{old}' of '{dotted}' in {where}: it is now '{renames[old]}' (the "
              "old name still loads; rename it)", file=sys.stderr)
    new = [renames.get(v, v) if isinstance(v, str) else v for v in values]
    return new if isinstance(value, list) else new[0]


def upgrade_fingerprint(recorded: dict[str, Any]) -> dict[str, Any]:
    """A recorded stage fingerprint (dotted keys: ``quality``, ``curation.upscale_to``) under today's key names, so
    a run made before a rename compares equal to today's params and resumes."""
    return dict(_upgraded_item(key, value) for key, value in recorded.items())


def _upgraded_item(dotted: str, value: Any, where: str | None = None) -> tuple[str, Any]:
    """One dotted key and its value (a section, a field) under today's names: an override, a fingerprint's item."""
    nested: dict[str, Any] = {}
    _set_dotted(nested, dotted, value, where or "a recorded fingerprint")
    node: Any = upgrade_keys(nested, where)
    for part in renamed_key(dotted).split("."):
        node = node[part]
    return renamed_key(dotted), node


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
    """``extends: OTHER``: this file's sections merge over OTHER's. OTHER is a path relative to this file
    (``pets.yaml``, ``../sgid/params/pets.yaml``) or the name of a shipped profile (``pets``, ``pets.yaml``), so a
    params file kept elsewhere (a Colab user's on Drive) can extend a shipped one without copying it. Relative paths
    in OTHER resolve against OTHER's own folder, as they would if it were loaded alone."""
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_file = _extended_file(str(parent), file)
    if parent_file is None or parent_file in seen or parent_file == file.resolve():
        shipped = ", ".join(sorted(p.stem for p in SHIPPED_PARAMS.glob("*.yaml"))) or "none found"
        raise ParamsError(f"Invalid params in {file}: 'extends' must name another params file, by a path relative "
                          f"to {file.resolve().parent} or as a shipped profile ({shipped}), without a loop; "
                          f"got {parent!r}")
    try:
        base = yaml.safe_load(parent_file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"Params file {parent_file} (extended by {file}) is not valid YAML: {exc}") from None
    base = upgrade_keys(base, str(parent_file)) if isinstance(base, dict) else base
    base = _with_base(base, parent_file, seen + (file.resolve(), parent_file))
    return _merge(_absolute_paths(base, parent_file.parent), data)


def _extended_file(name: str, file: Path) -> Path | None:
    """The file ``extends: name`` in ``file`` means: relative to ``file``'s folder first, then a shipped profile."""
    beside = (file.resolve().parent / name).resolve()
    if beside.is_file():
        return beside
    shipped = SHIPPED_PARAMS / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    return shipped.resolve() if "/" not in name and shipped.is_file() else None


def _absolute_paths(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``data`` (a params mapping before validation) with its relative paths and model folders made absolute
    against ``folder``: what an extended file's paths mean, wherever the file that extends it lives."""
    out = {**data}
    for dotted in _PATH_KEYS:
        section, key = dotted.split(".")
        value = (out.get(section) or {}).get(key) if isinstance(out.get(section), dict) else None
        if isinstance(value, str) and not Path(value).is_absolute():
            out[section] = {**out[section], key: str((folder / value).resolve())}
    if isinstance(out.get("models"), dict):
        out["models"] = {k: _resolve_model_ref(v, folder) if isinstance(v, str) else v
                         for k, v in out["models"].items()}
    training = out.get("training")
    if isinstance(training, dict) and isinstance(training.get("backbones"), list):
        out["training"] = {**training, "backbones": [
            {**b, "model": _resolve_model_ref(b["model"], folder)} if isinstance(b, dict)
            and isinstance(b.get("model"), str) else b for b in training["backbones"]]}
    return out


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
    data = _with_base(upgrade_keys(data, str(file)), file)
    base = file.resolve().parent
    for env, key in _ENV_OVERRIDES.items():  # the environment first: explicit overrides win over it
        if os.environ.get(env):
            _set_dotted(data, key, str(Path(os.environ[env]).resolve()), f"environment variable {env}")
    for key, value in (overrides or {}).items():
        where = f"override {key}={value!r}"
        _set_dotted(data, *_upgraded_item(key, value, where), f"{file} ({where})")
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
    for backbone in params.training.backbones:
        backbone.model = _resolve_model_ref(backbone.model, base)
    params.source_file = file.resolve()
    ds = params.dataset
    if ds.source == "imagefolder" and not params.smoke.build_dataset:
        for key, folder in (("dataset.path", ds.path), ("dataset.test_path", ds.test_path)):
            if folder is not None and not Path(folder).is_dir():
                raise ParamsError(f"Invalid params in {file}: '{key}' names a folder that does not exist: {folder}")
    return params


def load_run_params(params_file: str | os.PathLike[str] | None, run_dir: str | os.PathLike[str] | None = None,
                    sets: list[str] | tuple[str, ...] = ()) -> Params:
    """The params of ``--params`` / ``--run-dir`` / ``--set``, the same for every command.

    ``--run-dir`` replaces ``run.dir``; without ``--params`` the run's own recorded params (``<run>/params.yaml``,
    what its last stage started with) are read, so a run directory alone says how it was made. ``--set key=value``
    overrides a key either way.
    """
    overrides = dict(parse_override(s) for s in sets)
    if run_dir is not None:
        overrides["run.dir"] = str(Path(run_dir).resolve())
    if params_file is None:
        if run_dir is None:
            raise ParamsError("Give --params FILE (e.g. params/pets.yaml), or --run-dir DIR to use the params that "
                              "run recorded.")
        params_file = Path(run_dir) / RUN_PARAMS_FILE
        if not params_file.is_file():
            raise ParamsError(f"{Path(run_dir).resolve()} holds no {RUN_PARAMS_FILE}: it is not a run directory "
                              "(or no stage has started in it). Give --params FILE as well.")
    return load_params(params_file, overrides)


def _resolve_model_ref(ref: str, base: Path) -> str:
    """A model reference that looks like a relative path ('./x', '../x') becomes absolute; hub ids stay."""
    prefix = "local-dir:" if ref.startswith("local-dir:") else ""
    body = ref[len(prefix):]
    if body.startswith(("./", "../")):
        return prefix + str((base / body).resolve())
    return ref
