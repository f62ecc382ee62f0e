"""The guidance mapping (``augment.guidance``): f(s*) and how each mode turns it into the classifier-free guidance
scale a candidate is generated with."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pandas as pd
import pytest

from sgid_utils.augment.guidance import guidance_curve, guidance_scale
from sgid_utils.core import catalog
from sgid_utils.params.schema import GuidanceParams

PAPER = (-4.0, 2.0, 1.0)


@pytest.mark.parametrize(("s", "f"), [(0.0, 1.0), (0.25, 1.25), (0.5, 1.0), (0.396, 1.164736), (0.301, 1.239596)])
def test_guidance_mapping_is_the_papers_quadratic(s, f):
    assert guidance_curve(s, PAPER) == pytest.approx(f)
    assert guidance_scale(s, GuidanceParams()) == pytest.approx(f)


def test_the_coefficients_are_a_b_c_of_a_s2_plus_b_s_plus_c():
    assert guidance_curve(2.0, (1.0, 0.0, 0.0)) == 4.0
    assert guidance_curve(2.0, (0.0, 1.0, 0.0)) == 2.0
    assert guidance_curve(2.0, (0.0, 0.0, 1.0)) == 1.0
    assert guidance_scale(0.3, GuidanceParams(coefficients=(0, 0, 3))) == 3


def test_the_curve_on_an_array_is_the_curve_of_each_score():
    scores = np.linspace(-0.1, 0.6, 15)
    assert np.allclose(guidance_curve(scores, PAPER), [guidance_curve(float(s), PAPER) for s in scores])


def test_the_paper_curve_peaks_at_a_quarter_and_falls_on_both_sides():
    """The module's claim: no reading makes 'higher similarity, higher scale' true above s* = 0.25."""
    scores = np.linspace(0.0, 0.5, 51)
    f = guidance_curve(scores, PAPER)
    assert scores[np.argmax(f)] == pytest.approx(0.25) and f.max() == pytest.approx(1.25)
    assert np.all(np.diff(f[scores <= 0.25]) > 0) and np.all(np.diff(f[scores >= 0.25]) < 0)


@pytest.mark.parametrize("s", [0.0, 0.1, 0.25, 0.301, 0.396, 0.6])
def test_each_mode_turns_f_into_the_scale(s):
    f = guidance_curve(s, PAPER)
    assert guidance_scale(s, GuidanceParams(mode="direct", base_scale=7.5)) == pytest.approx(f)
    assert guidance_scale(s, GuidanceParams(mode="scaled", base_scale=7.5)) == pytest.approx(7.5 * f)
    assert guidance_scale(s, GuidanceParams(mode="scaled", base_scale=2.0)) == pytest.approx(2.0 * f)
    assert guidance_scale(s, GuidanceParams(mode="fixed", base_scale=7.5)) == 7.5


def test_every_mode_of_the_schema_has_its_own_branch():
    """A mode added to the schema without a branch would silently fall through to the fixed scale."""
    modes = set(get_args(GuidanceParams.model_fields["mode"].annotation))
    assert modes == {"direct", "scaled", "fixed"}, "a new mode needs a branch in guidance_scale and a case above"
    scales = {m: guidance_scale(0.3, GuidanceParams(mode=m, base_scale=5.0)) for m in modes}
    assert len(set(scales.values())) == len(modes)


def test_every_candidate_is_generated_with_the_scale_of_its_sources_s_star(pipeline_run):
    """The generation stage applies the mapping to each source's s* from the similarity stage, per candidate."""
    best = catalog.load(pipeline_run, "best_captions").set_index("image_id")
    manifest = catalog.load(pipeline_run, "manifest_raw")
    assert len(manifest)
    assert np.allclose(manifest.s_star, best.s_star.loc[manifest.image_id].to_numpy())
    expected = [guidance_scale(s, pipeline_run.generation.guidance) for s in manifest.s_star]
    assert np.allclose(manifest.guidance_scale, expected)
    assert pd.Series(expected).nunique() > 1  # the tiny run's scores differ, so the check compares something
