"""The run's one HTML page, ``reports/<run>/index.html``: what someone opens first.

At the top the forest plot of every gain, then per backbone SGID against the best non-generative method with its
interval, its test-set check and the verdict of both, and the two controls in their own table; one "How to read this
page" block; key facts, the wide table of methods by backbones beside the published numbers, the settings that differ
from the defaults with their sources, the figures, the ablation table and every executed notebook as HTML. Everything
is read from the run's files (catalog, ``RunDir``) and rendered by ``templates/report.html.j2``; figures are linked
relative to the page, so the folder can be zipped and opened anywhere. Nothing is computed here that a stage did not
write, so the page's numbers are the tables' numbers.
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

from sgid_utils.core import catalog
from sgid_utils.core.files import reason, write_text
from sgid_utils.core.fingerprints import check_recorded
from sgid_utils.core.provenance import load_provenance
from sgid_utils.core.registry import NAMES, notebooks
from sgid_utils.core.rundir import RunDir
from sgid_utils.errors import CorruptFileError
from sgid_utils.params.backbones import backbones, recipe
from sgid_utils.params.schema import Params
from sgid_utils.params.settings import changed_settings, settings_table
from sgid_utils.reporting.comparison import page_section
from sgid_utils.reporting.facts import key_facts
from sgid_utils.reporting.stats import COVERS
from sgid_utils.reporting.tables import (
    ABLATION_DELTA,
    ABLATION_SIGNIFICANT,
    ABLATION_SIGNIFICANT_HOLM,
    CONTROLS,
    DELTA,
    JOINT,
    JOINT_HOLM,
    OURS,
    PAPER_DATA_SET_GAIN,
    SIGNIFICANT,
    SIGNIFICANT_HOLM,
    TEST_SET_P,
    gains_caption,
    percent,
    table_caption,
)

# The page's main figures: their catalog entries and captions.
FIGURES = (
    ("accuracy_by_method", "Test accuracy per method: bars are the mean over seeds (±1 std), dots single seeds, "
                           "markers the published numbers."),
    ("consistency_vs_diversity", "Each generated set on our two metrics for the abstract's \"semantic consistency "
                                 "and image diversity\": consistency (CLIP label score) against diversity (distance "
                                 "to the source); numbered markers are listed in the legend."),
    ("originals_vs_sgid", "Training images beside the curated SGID image made from each."),
    ("gain_forest", "Each setting's gain over its backbone's Baseline, in accuracy points, with its 95% interval over "
                    "training seeds; filled dots: the interval excludes 0."),
    ("gain_vs_cost", "Each generative method's gain over the best non-generative method (points, 95% CI over seeds) "
                     "against the device hours of the stages its images need, as measured in this run."),
)


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
    return {"columns": [str(c) for c in df.columns],
            "rows": [[cell(v) for v in row] for row in df.astype(object).itertuples(index=False)]}


def render_notebooks(params: Params) -> list[dict[str, str]]:
    """Every executed notebook of the run rendered as HTML beside it (redone when the notebook is newer)."""
    run, exporter = RunDir.of(params), HTMLExporter(template_name="lab")
    out = []
    for name in notebooks():
        source, html = run.executed_notebook(name), run.notebook_html(name)
        if not source.exists():
            continue
        if not html.exists() or html.stat().st_mtime < source.stat().st_mtime:
            try:
                notebook = nbformat.read(source, as_version=4)
            except Exception as exc:  # nbformat raises several types (NotJSONError, ValueError, validation errors)
                raise CorruptFileError(f"{source} cannot be read ({reason(exc)}); rerun that notebook "
                                       f"(python -m sgid_utils notebooks --only {name} ...) or delete it") from None
            body, _ = exporter.from_notebook_node(notebook)
            write_text(html, body)
        out.append({"name": name, "html": _href(run, html), "ipynb": _href(run, source)})
    return out


def _href(run: RunDir, path: Path) -> str:
    """A link relative to the page, so the reports folder works wherever it is unpacked."""
    return Path(os.path.relpath(path, run.report_page.parent)).as_posix()


def figures(params: Params) -> tuple[dict[str, dict[str, str | None]], list[dict[str, str]]]:
    """The page's main figures by catalog name (src None where not made yet), and links to every other figure."""
    run = RunDir.of(params)
    paths = {entry: (catalog.path(run, entry), caption) for entry, caption in FIGURES}
    main = {entry: {"name": f.stem, "caption": c, "src": _href(run, f) if f.exists() else None}
            for entry, (f, c) in paths.items()}
    shown = {f.stem for f, _ in paths.values()}
    others = sorted(p for p in run.figures.glob("*.png") if p.stem not in shown) if run.figures.exists() else []
    return main, [{"name": p.stem, "src": _href(run, p)} for p in others]


def files(params: Params) -> list[dict[str, str]]:
    """Links to every table of the run, for readers who want the numbers themselves."""
    run = RunDir.of(params)
    paths = sorted(run.tables.glob("*")) if run.tables.exists() else []
    return [{"name": p.name, "src": _href(run, p)} for p in paths if p.suffix in (".csv", ".md")]


def project_root(params: Params) -> Path:
    """The folder paths on the page are shown relative to: the one holding params/, else the params file's folder."""
    folder = Path(params.source_file).resolve().parent
    return folder.parent if folder.name == "params" else folder


def relative(params: Params, text: str) -> str:
    """``text`` with every absolute path under the project root written relative to it (the page travels)."""
    root = str(project_root(params))
    return text.replace(root + os.sep, "").replace(root, ".")


def controls(ablations: pd.DataFrame | None) -> dict[str, str]:
    """Each control's result as one cell ('not run' when its variant has no row in tables/ablations.csv)."""
    out = {}
    for control in CONTROLS:
        row = None
        if ablations is not None and len(ablations):
            sets_key = ablations.Changes.astype(str).str.contains(control.key + "=", regex=False)
            hits = ablations[(ablations.Variant == control.variant) | sets_key]
            row = hits.iloc[0] if len(hits) else None
        out[control.variant] = "not run" if row is None else (
            # an ablation table written before the columns were renamed has 'Δ (95% CI)' and 'Significant'
            f"SGID (100%) − Baseline {row.get(ABLATION_DELTA, row.get('Δ (95% CI)'))} points; significant: "
            f"{row.get(ABLATION_SIGNIFICANT, row.get('Significant'))} unadjusted"
            + (f", {row[ABLATION_SIGNIFICANT_HOLM]} after Holm over the variants"
               if ABLATION_SIGNIFICANT_HOLM in row else ""))
    return out


def headline(params: Params, gains: pd.DataFrame | None, accuracy: pd.DataFrame) -> dict[str, Any] | None:
    """The page's first table: per backbone, SGID against the best non-generative method, its test-set check, the
    verdict of both, and the published gains (`references.headline`; `references.tables` tied to this data set)."""
    if gains is None or gains.empty:
        return None
    headline_label = params.references.headline.label if params.references.headline else None
    rows = []
    for g in gains.to_dict("records"):
        best = str(g["Best non-generative"])
        sgid = accuracy[(accuracy.Backbone == g["Backbone"]) & (accuracy.Method == g["SGID"])]
        rows.append([
            g["Backbone"],
            f"{g['SGID']} vs {'Baseline (no augmentation)' if best == 'Baseline' else best}",
            str(g["Gain (points, 95% CI)"]),
            str(g.get(TEST_SET_P, "–")),
            _both(str(g.get(JOINT, "–")), str(g.get(JOINT_HOLM, "–"))),
            "same as the gain" if best == "Baseline"
            else str(sgid[DELTA].iloc[0]) if len(sgid) and DELTA in sgid else "–",
            _points(g.get(headline_label)) if headline_label else "–",
            _points(g.get(PAPER_DATA_SET_GAIN)),
        ])
    columns = ["Backbone", "Comparison", "Gain (points, 95% CI)", "Test-set check (McNemar p, pooled over seeds)",
               "Verdict, seeds and test set: unadjusted / Holm",
               "SGID vs Baseline (points, 95% CI)", "Paper's gain, abstract (% read as points; no data set named)",
               PAPER_DATA_SET_GAIN]
    on_baseline = [str(b) for b, n in zip(gains.Backbone, gains["Best non-generative"]) if n == "Baseline"]
    return {"columns": columns, "rows": rows, "on_baseline": on_baseline}


def controls_table(params: Params, ablations: pd.DataFrame | None) -> dict[str, list]:
    """The two controls of the main verdict (they train the first backbone only) as their own small table."""
    done = controls(ablations)
    return {"columns": [f"Control (first backbone, {backbones(params)[0].label})", "Result"],
            "rows": [[c.label, done[c.variant]] for c in CONTROLS]}


def _both(plain: str, adjusted: str) -> str:
    """Both verdicts in one cell, named; once when they agree because neither could be given."""
    if plain == adjusted and plain.startswith("undetermined"):
        return plain
    return f"unadjusted: {plain}; Holm: {adjusted}"


def _points(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):+.2f}"


def wide_table(params: Params, accuracy: pd.DataFrame) -> dict[str, Any]:
    """Methods as rows, backbones as column groups (accuracy %, Δ in points, verdicts), then each published
    table in percent: the accuracy table of tables/accuracy.csv, read, not recomputed."""
    labels = [bb.label for bb in backbones(params) if (accuracy.Backbone == bb.label).any()]
    methods = list(dict.fromkeys(accuracy.Method))
    refs = [r.label for r in params.references.tables if r.label in accuracy]
    rows = []
    for method in methods:
        row = [method]
        for label in labels:
            hit = accuracy[(accuracy.Backbone == label) & (accuracy.Method == method)]
            if hit.empty:
                row += ["–", "–", "–"]
                continue
            r = hit.iloc[0]
            row += [str(r[OURS]), str(r.get(DELTA, "–")), _verdicts(r)]
        for ref in refs:
            values = accuracy.loc[(accuracy.Method == method) & accuracy[ref].notna(), ref]
            row.append(percent(float(values.iloc[0])) if len(values) else "–")
        rows.append(row)
    reasons = sorted({str(v)[len("undetermined ("):-1] for c in (SIGNIFICANT, SIGNIFICANT_HOLM) if c in accuracy
                      for v in accuracy[c] if str(v).startswith("undetermined (")})
    ref_backbones = {r.label: next((bb.label for i, bb in enumerate(backbones(params))
                                    if (r.backbone == bb.name if r.backbone else i == 0)), "")
                     for r in params.references.tables}
    return {"backbones": labels, "sub": ["acc. (%)", "Δ (points, 95% CI)", "sig.: unadj. / Holm"],
            "refs": [f"{ref} (%, {ref_backbones.get(ref, '')})" for ref in refs], "rows": rows, "reasons": reasons}


def _verdicts(row: pd.Series) -> str:
    """'yes / no' (unadjusted / Holm), 'undetermined', or a dash on the Baseline's own row."""
    plain, adjusted = str(row.get(SIGNIFICANT, "–")), str(row.get(SIGNIFICANT_HOLM, "–"))
    if plain == "–":
        return "–"
    if plain.startswith("undetermined"):
        return "undetermined"
    return f"{plain} / {adjusted}"


def backbones_table(params: Params) -> dict[str, list]:
    """The classifiers as a small table: label, model, recipe, and where the recipe comes from."""
    rows = [[bb.label, relative(params, bb.model), relative(params, recipe(bb)).split(": ", 1)[-1],
             bb.source or "not given (training.backbones[].source)"] for bb in backbones(params)]
    return {"columns": ["Backbone", "model", "recipe", "recipe from"], "rows": rows}


# Not settings of the method: the published numbers the page shows beside ours, and the ablation variants (own section).
NOT_SETTINGS = ("references.tables", "references.headline", "ablations")


def settings(params: Params, every: bool = False) -> dict[str, list]:
    """The settings that differ from the package defaults (``every``: all of them), each with its origin and source
    (sgid_utils.params.sources), paths written relative to the project; reference numbers and ablation variants
    left out."""
    rows = settings_table(params) if every else changed_settings(params)
    rows = rows[~rows.setting.str.startswith(NOT_SETTINGS)]
    return table_data(rows.map(lambda v: relative(params, v) if isinstance(v, str) else v))


def context(params: Params) -> dict[str, Any]:
    """Everything the template shows, read from the run's files."""
    accuracy = catalog.load(params, "accuracy")
    gains = catalog.load(params, "backbone_gains", missing=None)
    ablations, set_metrics = (catalog.load(params, "ablations", missing=None),
                              catalog.load(params, "set_metrics", missing=None))
    provenance = load_provenance(params, NAMES)
    main, other = figures(params)
    return {
        "title": f"SGID pipeline run: {params.run.name}",
        "smoke": params.smoke.build_models,
        "headline": headline(params, gains, accuracy),
        "controls": controls_table(params, ablations),
        "covers": COVERS,
        "facts": [(k, relative(params, v)) for k, v in key_facts(params, provenance)],
        "backbones": backbones_table(params),
        "settings": settings(params),
        "all_settings": settings(params, every=True),
        "wide": wide_table(params, accuracy),
        "accuracy_caption": table_caption(params, catalog.load(params, "training_results")),
        "gains_caption": gains_caption(params, gains),
        "figures": main, "other_figures": other,
        "ablations": table_data(ablations) if ablations is not None else None,
        "set_metrics": table_data(set_metrics) if set_metrics is not None else None,
        "comparison": page_section(catalog.load(params, "comparison", missing=None), table_data),
        "provenance": table_data(provenance) if len(provenance) else None,
        "notebooks": render_notebooks(params),
        "files": files(params),
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def build_report(params: Params) -> Path:
    """Write ``reports/<run>/index.html`` (and the notebooks' HTML) from the run's files; return the page's path.
    Refused when ``params`` disagree with what the run's stages recorded: the page states the run's settings."""
    check_recorded(params, "report")
    env = Environment(loader=PackageLoader("sgid_utils.reporting", "templates"),
                      autoescape=select_autoescape(["html", "j2"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    page = env.get_template("report.html.j2").render(**context(params))
    return write_text(RunDir.of(params).report_page, page)
