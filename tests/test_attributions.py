"""Every attribution to the paper or the report can be checked word for word, so new text stays honest.

Two checks, both against ``../shared/reference/`` beside the repository (the reproduction report and the paper's
public passages; CI has it, a user's clone may not: then they skip with that reason):

- each ``Source`` of origin ``report`` or ``paper`` carries a quote found word for word in those texts;
- each attributing phrase ("the paper", "the report", "the abstract", "as in the", "faithful", "exact") in the
  docs, notebooks, params comments, page templates and page text has its evidence beside it: a quote found in
  those texts, a backticked Source key (`training.lr`), or words that call it a reading or our choice.
"""

from __future__ import annotations

import json
import re

import pytest

from sgid_utils.params.origins import QUOTED, Source
from sgid_utils.params.sources import SOURCES, source_of

from .conftest import REPO

REFERENCE = REPO.parent / "shared" / "reference"
TEXTS = ("sgid_reproduction_report.md", "sgid_paper_public.md")

# Where attributions are written for readers (docs/gpu/ holds dated GPU logs: timings, with the paths of their day).
SCANNED = ["README.md", "docs/ARCHITECTURE.md", "docs/CHOICES.md", "docs/RUNS.md", "docs/EXPERIMENTS.md",
           "docs/OUTPUTS.md", "docs/PARAMS.md", "docs/GPU.md", "docs/PERFORMANCE.md", "Makefile", "params/*.yaml",
           "notebooks/*.ipynb", "sgid_utils/reporting/templates/*", "sgid_utils/reporting/page.py",
           "sgid_utils/reporting/tables.py", "sgid_utils/reporting/plots.py"]

ATTRIBUTING = re.compile(r"\b(the paper|the report|the abstract|as in the|faithful\w*|exact)\b", re.IGNORECASE)
# "the report" also names this package's own page, and "beyond the paper" attributes nothing: those need no evidence.
OWN_PAGE = re.compile(r"the report (page|stage|folder|command|card)|the report(s)? ?dir", re.IGNORECASE)
NOT_ATTRIBUTING = re.compile(r"(beyond|neither|and|nor) (the paper|the report)|the report is ambiguous", re.IGNORECASE)
DISCLAIMER = re.compile(r"\b(readings?|read as|our choice|package's choice|our own|ours|not stated|does not (say|give|"
                        r"name|state|mention)|do not (say|give|name|state)|never (says|gives|names|states)|gives no|"
                        r"names no|names neither|gives neither|gives only|our assumption|states no|"
                        r"not the (paper|report)'s|cannot (be )?(identif|tell))", re.IGNORECASE)
KEY = re.compile(r"`([a-z_]+(?:\[[^\]`]*\])?(?:\.[a-z_]+(?:\[[^\]`]*\])?)+)`")
QUOTE = re.compile(r"\"([^\"\n]{6,}?)\"|“([^”]{6,}?)”|(?<![A-Za-z])'([^'\n]{6,}?)'(?![A-Za-z])|"
                   r"\\\"([^\"\n]{6,}?)\\\"")
NEAR = 200  # characters either side of the phrase that count as "beside it"


def normalise(text: str) -> str:
    """Text with markup dropped (blockquote marks, emphasis, bold tags, math delimiters), curly quotes straightened,
    spaces collapsed."""
    text = re.sub(r"^> ?", "", text, flags=re.MULTILINE)
    text = re.sub(r"</?b>|[*$^\\]", "", text)
    text = text.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')
    text = re.sub(r"\s+", " ", text)
    return re.sub(r"\( | (?=[),])", lambda m: m.group(0).strip(), text).strip()


@pytest.fixture(scope="module")
def reference() -> str:
    missing = [name for name in TEXTS if not (REFERENCE / name).is_file()]
    if missing:
        pytest.skip(f"the reference texts are not beside this clone ({REFERENCE}: no {', '.join(missing)}); "
                    "CI keeps them in ../shared/reference/")
    return " \n ".join(normalise((REFERENCE / name).read_text()) for name in TEXTS)


def found(quote: str, reference: str) -> bool:
    """Word for word, up to markup, spacing and letter case (a quoted fragment may start a sentence)."""
    return normalise(quote).lower() in reference.lower()


def test_every_report_or_paper_source_quotes_the_texts_word_for_word(reference):
    quoted = {k: s for k, s in SOURCES.items() if s.origin in QUOTED}
    assert len(quoted) >= 25
    wrong = {k: s.quote for k, s in quoted.items() if not found(s.quote, reference)}
    assert not wrong, f"not found word for word in {REFERENCE}: {wrong}"


def test_the_quote_check_fails_on_words_the_texts_do_not_hold(reference):
    assert found("a constant   learning rate of **0.0001**", reference)  # markup and spacing do not count
    assert not found("a constant learning rate of 0.001", reference)
    assert not found("averaged over seven data sets", reference)
    assert found("outperforms the best augmentation baseline by 1.72% on ResNet-50 (from scratch)", reference)


def test_a_report_or_paper_source_without_its_quote_is_refused():
    with pytest.raises(ValueError, match="exact words"):
        Source("report", "Comparison of Augmentation Techniques and Model Training: Adam")
    with pytest.raises(ValueError, match="must show the quote"):
        Source("paper", "the abstract", "outperforms the best augmentation baseline")
    assert Source("package", "our choice").quote == ""


def scanned_units() -> list[tuple[str, str]]:
    """(file, unit) pairs: a paragraph, a table row or a list item of prose; params files give their comments."""
    units = []
    for pattern in SCANNED:
        for path in sorted(REPO.glob(pattern)):
            text = path.read_text()
            if path.suffix == ".ipynb":
                text = "\n\n".join("".join(cell["source"]) for cell in json.loads(text)["cells"])
            for block in re.split(r"\n\s*\n", text):
                if re.match(r"\s*(\||- |\* |\d+\. )", block):
                    units += [(path.relative_to(REPO).as_posix(), item)
                              for item in re.split(r"\n(?=\s*(?:\||- |\* |\d+\. ))", block)]
                else:
                    units.append((path.relative_to(REPO).as_posix(), block))
    return units


def is_key(name: str) -> bool:
    try:
        source_of(name)
    except KeyError:
        return False
    return True


def unbacked(unit: str, reference: str) -> list[str]:
    """The attributing phrases of ``unit`` with no quote, Source key or disclaimer within NEAR characters."""
    flat = re.sub(r"\s+", " ", unit)
    bad = []
    for hit in ATTRIBUTING.finditer(flat):
        if OWN_PAGE.match(flat, hit.start()) or NOT_ATTRIBUTING.search(flat[max(0, hit.start() - 8):hit.end() + 13]):
            continue
        near = flat[max(0, hit.start() - NEAR):hit.end() + NEAR]
        quotes = [next(g for g in m.groups() if g) for m in QUOTE.finditer(near)]
        if (DISCLAIMER.search(near) or any(is_key(k) for k in KEY.findall(near))
                or any(len(q) >= 10 and found(q, reference) for q in quotes)):
            continue
        bad.append(flat[max(0, hit.start() - 60):hit.end() + 60])
    return bad


def test_the_attribution_check_needs_evidence_beside_the_words(reference):
    assert unbacked("The abstract gives the gains averaged over seven data sets.", reference)
    assert unbacked("As in the paper, the captions come from BLIP.", reference)
    assert not unbacked("The paper evaluates 'seven commonly used datasets'.", reference)
    assert not unbacked("The report's lr (`training.lr`).", reference)
    assert not unbacked("The epochs are our choice: the report gives no epoch count.", reference)
    assert not unbacked("Open the report page.", reference)


def test_every_attribution_has_its_evidence_beside_it(reference):
    bad = [f"{name}: …{excerpt}…" for name, unit in scanned_units() for excerpt in unbacked(unit, reference)]
    assert not bad, ("attributions without a quote found in ../shared/reference/, a backticked Source key or "
                     "words calling them a reading:\n" + "\n".join(bad))


def misquoted(unit: str, reference: str) -> list[str]:
    """Double-quoted spans of four words or more that follow an attributing phrase closely but are not in the texts
    (single quotes are left out: in prose they are mostly apostrophes)."""
    flat = re.sub(r"\s+", " ", unit)
    bad = []
    for hit in ATTRIBUTING.finditer(flat):
        if OWN_PAGE.match(flat, hit.start()) or NOT_ATTRIBUTING.search(flat[max(0, hit.start() - 8):hit.end() + 13]):
            continue
        for m in re.finditer(r"\"([^\"]{6,}?)\"|“([^”]{6,}?)”", flat[hit.end():hit.end() + 120]):
            quote = next(g for g in m.groups() if g)
            ours = re.search(r"[<`{]", quote) or NOT_ATTRIBUTING.search(quote)  # a template, code or our own heading
            if len(quote.split()) >= 4 and not ours and not found(quote, reference):
                bad.append(quote)
    return bad


def test_a_quote_beside_an_attribution_is_word_for_word(reference):
    assert misquoted('The report says "the guidance scale is f(s*) itself".', reference)
    assert not misquoted('The report says "A guidance mapping function defined as in the original paper".', reference)
    bad = [f"{name}: {q!r}" for name, unit in scanned_units() if not name.endswith(".py")
           for q in misquoted(unit, reference)]
    assert not bad, "quoted as the report's or the paper's but not found word for word:\n" + "\n".join(bad)
