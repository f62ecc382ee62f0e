"""The settings table: every leaf setting of a run's params with its value, its default and where the default comes
from (``params.sources``), for the report page and the notebooks.

A list of sections shows one row per item and field, the item named in the key
(``training.backbones[resnet50_scratch].lr``); ``changed_settings`` keeps the rows that differ from the default.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any, Union, get_args, get_origin

import pandas as pd
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from sgid_utils.params.schema import Params
from sgid_utils.params.sources import COLUMNS, REQUIRED, source_of


def _section_type(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the section model inside an annotation, whether it is a list of them); (None, False) for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = get_origin(annotation)
    if origin is list:
        inner, _ = _section_type(get_args(annotation)[0])
        return inner, inner is not None
    if origin in (Union, types.UnionType):
        models = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return (models[0], False) if len(models) == 1 else (None, False)
    return None, False


def schema_keys(model: type[BaseModel] = Params, prefix: str = "") -> Iterator[str]:
    """Every SOURCES key the schema defines, in schema order (see the module docstring for the convention)."""
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        inner, is_list = _section_type(field.annotation)
        key = f"{prefix}{name}"
        if inner is None:
            yield key
            continue
        always_there = not is_list and not _optional(field)
        if not always_there:
            yield key
        yield from schema_keys(inner, f"{key}[]." if is_list else f"{key}.")


def _optional(field: FieldInfo) -> bool:
    return get_origin(field.annotation) in (Union, types.UnionType)


def _default(field: FieldInfo) -> Any:
    return REQUIRED if field.is_required() else field.get_default(call_default_factory=True)


def _item_id(item: BaseModel, position: int) -> str:
    return str(getattr(item, "name", None) or position)


def _rows(model: BaseModel, prefix: str) -> Iterator[tuple[str, str, Any, Any]]:
    """(setting, SOURCES key, this run's value, the package default) for every setting of ``model``."""
    for name, field in type(model).model_fields.items():
        if field.exclude:
            continue
        value = getattr(model, name)
        inner, is_list = _section_type(field.annotation)
        key, setting = f"{prefix[1]}{name}", f"{prefix[0]}{name}"
        if inner is None:
            yield setting, key, value, _default(field)
        elif is_list:
            yield setting, key, [_item_id(v, i) for i, v in enumerate(value)], []
            for i, item in enumerate(value):
                yield from _rows(item, (f"{setting}[{_item_id(item, i)}].", f"{key}[]."))
        elif _optional(field):
            yield setting, key, "set" if value is not None else None, None
            if value is not None:
                yield from _rows(value, (f"{setting}.", f"{key}."))
        else:
            yield from _rows(value, (f"{setting}.", f"{key}."))


def _show(value: Any) -> str:
    """A value as a params file writes it (YAML-like: true, [0, 1], none)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _table(params: Params, changed_only: bool) -> pd.DataFrame:
    rows = []
    for setting, key, value, default in _rows(params, ("", "")):
        if changed_only and value == default:
            continue
        source = source_of(key)
        rows.append([setting, _show(value), _show(default), source.origin, source.text()])
    return pd.DataFrame(rows, columns=COLUMNS)


def settings_table(params: Params) -> pd.DataFrame:
    """One row per setting of this run: its value, the package default, and where that default comes from.

    ``origin`` and ``source`` describe the package default; a value this run's params file sets instead comes from
    that file (its comments say why). Items of a list (backbones, references, ablation variants) get one row each
    field, named ``training.backbones[<name>].lr``.
    """
    return _table(params, changed_only=False)


def changed_settings(params: Params) -> pd.DataFrame:
    """The rows of ``settings_table`` whose value differs from the package default (required settings included)."""
    return _table(params, changed_only=True)
