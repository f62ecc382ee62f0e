"""The run's one HTML page, ``reports/<run>/index.html``: what someone opens first.

Key facts (data set, models, the settings that differ from the paper's, seeds, when and on
what machine each stage ran), the accuracy table beside the paper's numbers, the bar chart,
the consistency-diversity figure, the ablation table, and links to every executed notebook
rendered as HTML beside it (nbconvert). Everything is read from the run's own files through
their loaders and ``RunDir``, rendered by a jinja2 template shipped with the package
(``templates/report.html.j2``); figures are linked relative to the page, so the reports folder
can be zipped and opened anywhere without a server. Nothing is computed here that a stage
did not write, so the page's numbers are the tables' numbers.
"""

from __future__ import annotations

import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from nbconvert import HTMLExporter
from pydantic import BaseModel

from .ablations import load_ablation_table
from .curation import load_curated
from .data import load_images_table
from .io import write_text
from .provenance import load_provenance
from .quality_report import CONSISTENCY_DIVERSITY, load_set_metrics
from .results import gains_caption, load_accuracy_table, load_significance, table_caption, verdicts
from .rundir import RunDir
from .schema import Params
from .stages import NAMES, notebooks
from .training import backbones, load_results, recipe

# Sections that are not settings of the method: reference numbers, and the ablation variants (their own table).
NOT_SETTINGS = ("results", "ablations")
# The accuracy table's numeric copies of the "Ours" column stay in the CSV; the page shows the report's format.
ACCURACY_HIDDEN = ("mean", "std", "seeds")
FIGURES = (
    ("accuracy_by_method", "Test accuracy per method: bars are the mean over seeds (±1 std), dots single seeds, "
                           "markers the published numbers."),
    (CONSISTENCY_DIVERSITY, "Each generated set on the paper's two axes: consistency (CLIP label score) against "
                            "diversity (distance to the source); ablation variants as crosses."),
    ("originals_vs_sgid", "Training images beside the curated SGID image made from each."),
)


def differences_from_defaults(params: Params) -> pd.DataFrame:
    """Every dotted key whose value differs from the params schema's default (the paper's and report's settings).

    Keys without a default (run name and folders, the data set's source) are facts, not choices, and are skipped.
    """
    rows = []

    def walk(model: BaseModel, prefix: str) -> None:
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            if field.exclude or (not prefix and name in NOT_SETTINGS):
                continue
            if isinstance(value, BaseModel):
                walk(value, f"{prefix}{name}.")
            elif not field.is_required():
                default = field.get_default(call_default_factory=True)
                if value != default:
                    rows.append({"key": f"{prefix}{name}", "this run": _show(value), "paper (schema default)": _show(default)})

    walk(params, "")
    return pd.DataFrame(rows, columns=["key", "this run", "paper (schema default)"])


def _show(value: Any) -> str:
    """A params value as it is written in a params file (YAML: true, [0, 1]); unset as a dash."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return "–" if value is None else str(value)


def cell(value: Any) -> str:
    """How a table value is printed on the page: floats to 4 decimals, missing values as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def table_data(df: pd.DataFrame) -> dict[str, list]:
    """A table as the template loops over it: column names and rows of printed cells."""
    return {"columns": [str(c) for c in df.columns], "rows": [[cell(v) for v in row] for row in df.astype(object).itertuples(index=False)]}


def key_facts(params: Params, provenance: pd.DataFrame) -> list[tuple[str, str]]:
    """The run in a few lines: data set and its sizes, models, seeds, training length, when and where it ran."""
    ds, run = params.dataset, RunDir.of(params)
    images = load_images_table(params)
    train, test = images[images.split != ds.test_split], images[images.split == ds.test_split]
    where = (ds.hf_id or ds.source) if ds.source != "imagefolder" else f"image folder {ds.path}"
    splits = "+".join(ds.train_splits) if ds.source != "imagefolder" else "train folder"
    curated = len(load_curated(params)) if run.curated_table().exists() else 0
    m = params.models
    return [
        ("Data set", f"{ds.source} ({where}); trained on {splits}, tested on '{ds.test_split}'"),
        ("Images", f"{len(train)} training, {len(test)} test, {images.label.nunique()} classes; "
                   f"{curated} curated generated images"),
        ("Models", f"captioner {m.captioner}; CLIP {m.clip}; diffusion {m.diffusion}"
                   + (f" with ControlNet {m.controlnet}" if params.generation.generator == "controlnet" else "")
                   + "; classifier" + ("s " + ", ".join(f"{b.label} {b.model}" for b in backbones(params))
                                        if params.training.backbones else f" {m.classifier}")),
        ("Seeds", f"run seed {params.run.seed}; training seeds {params.training.seeds}"),
        ("Training", f"methods {', '.join(params.training.methods)}; " + "; ".join(recipe(bb) for bb in backbones(params))),
        ("Ran", ran(provenance)),
        ("Params file", str(params.source_file)),
    ]


def ran(provenance: pd.DataFrame) -> str:
    """When the stages started and on which machines, in one line (the table under "When and where" has the rest)."""
    if provenance.empty:
        return "not recorded (this run directory predates the runner's stage records)"
    machines = dict.fromkeys(m for ms in provenance.machine for m in ms.split(" / "))
    return (f"stages started {provenance['first started'].min()} to {provenance['last started'].max()} (UTC) on "
            f"{'; '.join(machines)}; torch {' / '.join(dict.fromkeys(provenance.torch))}")


def render_notebooks(params: Params) -> list[dict[str, str]]:
    """Every executed notebook of the run rendered as HTML beside it (redone when the notebook is newer)."""
    run, exporter = RunDir.of(params), HTMLExporter(template_name="lab")
    out = []
    for name in notebooks():
        source, html = run.executed_notebook(name), run.notebook_html(name)
        if not source.exists():
            continue
        if not html.exists() or html.stat().st_mtime < source.stat().st_mtime:
            body, _ = exporter.from_notebook_node(nbformat.read(source, as_version=4))
            write_text(html, body)
        out.append({"name": name, "html": _href(run, html), "ipynb": _href(run, source)})
    return out


def _href(run: RunDir, path: Path) -> str:
    """A link relative to the page, so the reports folder works wherever it is unpacked."""
    return Path(os.path.relpath(path, run.report_page.parent)).as_posix()


def figures(params: Params) -> tuple[list[dict[str, str | None]], list[dict[str, str]]]:
    """The page's main figures (None where not made yet), and links to every other figure of the run."""
    run = RunDir.of(params)
    main = [{"name": n, "caption": c, "src": _href(run, run.figure(n)) if run.figure(n).exists() else None} for n, c in FIGURES]
    shown = {n for n, _ in FIGURES}
    others = sorted(p for p in run.figures.glob("*.png") if p.stem not in shown) if run.figures.exists() else []
    return main, [{"name": p.stem, "src": _href(run, p)} for p in others]


def files(params: Params) -> list[dict[str, str]]:
    """Links to every table of the run, for readers who want the numbers themselves."""
    run = RunDir.of(params)
    paths = sorted(run.tables.glob("*")) if run.tables.exists() else []
    return [{"name": p.name, "src": _href(run, p)} for p in paths if p.suffix in (".csv", ".md")]


def context(params: Params) -> dict[str, Any]:
    """Everything the template shows, read from the run's files."""
    accuracy = load_accuracy_table(params)
    sig = load_significance(params)
    gains_file = RunDir.of(params).table("backbone_gains.csv")
    gains = pd.read_csv(gains_file) if gains_file.exists() else None
    ablations, set_metrics = load_ablation_table(params), load_set_metrics(params)
    provenance = load_provenance(params, NAMES)
    main, other = figures(params)
    return {
        "title": f"SGID reproduction: {params.run.name}",
        "smoke": params.smoke.build_models,
        "facts": key_facts(params, provenance),
        "differences": table_data(differences_from_defaults(params)),
        "accuracy": table_data(accuracy.drop(columns=list(ACCURACY_HIDDEN))),
        "accuracy_caption": table_caption(params, load_results(params)),
        "verdicts": verdicts(params, sig),
        "gains": table_data(gains.drop(columns="backbone")) if gains is not None and len(backbones(params)) > 1 else None,
        "gains_caption": gains_caption(params),
        "figures": main, "other_figures": other,
        "ablations": table_data(ablations) if ablations is not None else None,
        "set_metrics": table_data(set_metrics) if set_metrics is not None else None,
        "provenance": table_data(provenance) if len(provenance) else None,
        "notebooks": render_notebooks(params),
        "files": files(params),
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def build_report(params: Params) -> Path:
    """Write ``reports/<run>/index.html`` (and the notebooks' HTML) from the run's files; return the page's path."""
    env = Environment(loader=PackageLoader("sgid_utils", "templates"), autoescape=select_autoescape(["html", "j2"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    page = env.get_template("report.html.j2").render(**context(params))
    return write_text(RunDir.of(params).report_page, page)
