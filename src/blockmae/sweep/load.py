"""Reading a sweep spec: its YAML parsed and its arms expanded (`sweep.spec`), its evaluations checked
(`sweep.evaluations`, which builds on the spec's types)."""

from __future__ import annotations

from pathlib import Path

import yaml

from blockmae.config import resolve_config_path
from blockmae.errors import BlockMAEError
from blockmae.sweep.evaluations import check_evaluations
from blockmae.sweep.spec import SweepSpec, parse_spec


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec; the arms are expanded (and each config validated) here."""
    path = resolve_config_path(path, "sweep spec")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise BlockMAEError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise BlockMAEError(f"{path}: a sweep spec is a mapping with at least `base` (see docs/ablations.md)")
    spec = parse_spec(raw, str(path))
    spec.arms()
    spec.baseline_arm()
    check_evaluations(spec)
    return spec
