"""Glue shared by every stage: smoke assets, the data table, and the stage registry."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from .io import write_text
from .params import Params


def ensure_inputs(params: Params) -> pd.DataFrame:
    """Build smoke assets if asked, record the params, and return the images table."""
    from .data import prepare_dataset
    from .tiny import ensure_smoke_assets

    ensure_smoke_assets(params)
    run_dir = Path(params.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "params.yaml", yaml.safe_dump(params.model_dump(mode="json", exclude={"source_file"}), sort_keys=False))
    return prepare_dataset(params)
