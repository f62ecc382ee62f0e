"""The report tables' shared declarations (``reporting.tables``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sgid_utils.params.load import load_params
from sgid_utils.reporting.tables import CONTROLS

PROFILES = sorted((Path(__file__).resolve().parent.parent / "params").glob("*_ablations.yaml"))


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_each_control_is_a_variant_of_every_ablation_profile_that_sets_its_key(profile):
    """The page and the ablation table find a control by its variant name or its key: both must hold in every
    shipped profile, or the page says 'not run' for a control that ran."""
    variants = {a.name: a.set for a in load_params(profile).ablations}
    for control in CONTROLS:
        assert control.variant in variants, f"{profile.name} has no variant '{control.variant}'"
        assert control.key in variants[control.variant], f"{profile.name}: '{control.variant}' sets {control.key}"
    assert len({c.key for c in CONTROLS}) == len({c.variant for c in CONTROLS}) == len(CONTROLS)
