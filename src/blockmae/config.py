"""Typed configuration: dataclass schemas checked by OmegaConf, YAML files, dotted overrides.

Every command that takes a config goes through :func:`load_config`, so an unknown key or a
value of the wrong type is always the same one-line error naming the key and the valid ones.
Config files are found by :func:`resolve_config_path`: a path, or the name of a config shipped in the
package (`smoke`, `ablations/block_size`), so an installed wheel works outside a checkout.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import math
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from blockmae.errors import BlockMAEError

T = TypeVar("T")


def _valid_keys(schema: type, dotted: str) -> list[str]:
    """The field names at the level of `dotted` (a key path that failed)."""
    node: Any = schema
    for part in dotted.split(".")[:-1]:
        node = typing.get_type_hints(node).get(part) if dataclasses.is_dataclass(node) else None
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []


def _explain(err: OmegaConfBaseException, schema: type, source: str) -> BlockMAEError:
    key = getattr(err, "full_key", None) or ""
    if isinstance(err, ConfigKeyError):
        valid = _valid_keys(schema, key) if key else []
        hint = f"; valid keys here: {', '.join(valid)}" if valid else ""
        return BlockMAEError(f"unknown config key '{key}' in {source}{hint}")
    msg = str(err).splitlines()[0]
    return BlockMAEError(f"bad config value for '{key}' in {source}: {msg}")


def _read_yaml(path: Path) -> Any:
    """The YAML file as an OmegaConf node; a syntax error is one line, `file:line:column: problem`."""
    try:
        node = OmegaConf.load(path)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise BlockMAEError(f"{where}: YAML syntax error: {err.problem or err.context}") from None
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as err:
        raise BlockMAEError(f"{path}: not a readable YAML file ({str(err).splitlines()[0]})") from None
    if not isinstance(node, DictConfig):
        raise BlockMAEError(f"{path}: a config file must be a mapping of sections (model:, train:, ...), "
                            f"not a {type(node).__name__}")
    return node


def shipped_configs_dir() -> Path:
    """The package's configs folder (the repository's `configs` is a symlink to it)."""
    return Path(str(importlib.resources.files("blockmae") / "configs"))


def shipped_config_names() -> list[str]:
    """Names that `--config NAME` accepts: `smoke`, `ablations/block_size`, ... (sorted)."""
    root = shipped_configs_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def resolve_config_path(text: str | Path, what: str = "config") -> Path:
    """An existing file path wins; else a shipped config by name, with or without `.yaml` and with or
    without a leading `configs/` (so `configs/smoke.yaml` in a spec works from an installed wheel too)."""
    path = Path(text)
    if path.is_file():
        return path
    name = path.as_posix()
    if not path.is_absolute():
        name = name.removeprefix("./").removeprefix("configs/")
        shipped = shipped_configs_dir() / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
        if shipped.is_file():
            return shipped
    raise BlockMAEError(f"{what} file not found: {text} (neither a file nor a shipped config; shipped: "
                        f"{', '.join(shipped_config_names())})")


def _refuse_empty_mappings(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """`key={}` merges nothing into a mapping that has entries (OmegaConf merges mappings key by key): refuse
    it rather than keep the entries the user meant to clear."""
    for override in overrides:
        key, _, value = override.partition("=")
        if value.strip() == "{}" and OmegaConf.select(cfg, key.strip(), default=None):
            raise BlockMAEError(f"override '{override}' changes nothing: an empty mapping merges into {key.strip()}'s "
                                f"entries; use {key.strip()}=null for none, or set its entries one by one")


def load_config(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Schema defaults <- YAML file <- `key.sub=value` overrides; returns a checked schema instance."""
    cfg = OmegaConf.structured(schema)
    source = "the defaults"
    try:
        if path is not None:
            path = resolve_config_path(path)
            source = str(path)
            cfg = OmegaConf.merge(cfg, _read_yaml(path))
        source = "the command-line overrides"
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise BlockMAEError(f"override '{bad[0]}' is not of the form key=value (e.g. train.epochs=50)")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        _refuse_empty_mappings(cfg, overrides)
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise _explain(err, schema, source) from None
    _check(obj)
    return obj  # type: ignore[return-value]


def from_dict(schema: type[T], data: Mapping[str, Any], source: str = "a stored config") -> T:
    """A checked schema instance from a plain dict (e.g. a run's resolved config read back)."""
    try:
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), dict(data)))
    except OmegaConfBaseException as err:
        raise _explain(err, schema, source) from None
    _check(obj)
    return obj  # type: ignore[return-value]


def _check(obj: Any) -> None:
    """The checks every loaded config gets: finite numbers, the ranges its classes declare, its validate()."""
    if dataclasses.is_dataclass(obj):
        check_numbers(obj)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()


# A config dataclass declares the ranges of its numeric keys as `RANGES: ClassVar[dict[str, str]] =
# {"epochs": ">=1", "base_lr": ">0", "mixup": "0..1"}` (`..`: both ends included); null is always allowed.
_BOUNDS = {">=": lambda v, b: v >= b, ">": lambda v, b: v > b, "<=": lambda v, b: v <= b, "<": lambda v, b: v < b}


def in_range(value: float, rule: str) -> bool:
    if rule.startswith("("):  # "(0..1)": both ends excluded
        low, high = (float(x) for x in rule[1:-1].split(".."))
        return low < value < high
    if ".." in rule:
        low, high = (float(x) for x in rule.split(".."))
        return low <= value <= high
    op = rule[:2] if rule[:2] in _BOUNDS else rule[:1]
    return _BOUNDS[op](value, float(rule[len(op):]))


def range_text(rule: str) -> str:
    if rule.startswith("("):
        low, high = rule[1:-1].split("..")
        return f"in ({low}, {high})"
    if ".." in rule:
        low, high = rule.split("..")
        return f"in [{low}, {high}]"
    return {">=1": "at least 1", ">0": "positive", ">=0": "zero or more"}.get(rule.replace(" ", ""), rule)


def check_ranges(obj: Any, prefix: str = "") -> None:
    """BlockMAEError naming the first key of a config dataclass outside the range its class declares."""
    rules = getattr(type(obj), "RANGES", {})
    for f in dataclasses.fields(obj):
        key, value = f"{prefix}{f.name}", getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{key}.")
        elif f.name in rules and value is not None:
            items = value if isinstance(value, (list, tuple)) else [value]
            if any(not in_range(float(v), rules[f.name]) for v in items):
                raise BlockMAEError(f"{key} must be {range_text(rules[f.name])}, got {value}")


def number(kind: type = float, rule: str | None = None) -> Any:
    """An argparse `type=` for a number option: NaN and infinity refused, and `rule` (as in RANGES: ">0",
    ">=1", "0..1") checked, each in one line naming the option (cli.main prints argparse's errors so)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if rule is not None and not in_range(value, rule):
            raise argparse.ArgumentTypeError(f"must be {range_text(rule)}, got {text}")
        return value

    parse.__name__ = "integer" if kind is int else "number"
    return parse


def check_numbers(obj: Any) -> None:
    """Every number of a config dataclass finite and in its declared range (see RANGES), else one line naming it."""
    check_finite(obj)
    check_ranges(obj)


def check_finite(obj: Any, prefix: str = "") -> None:
    """BlockMAEError naming the first NaN or infinite float (or list item) of a config dataclass: no
    setting of ours means anything when it is not finite, and each would fail only later."""
    for f in dataclasses.fields(obj):
        key, value = f"{prefix}{f.name}", getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_finite(value, f"{key}.")
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, float) and not math.isfinite(item):
                raise BlockMAEError(f"{key} must be a finite number, got {value}")


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """`key: old -> new` for every leaf where two nested dicts differ (sorted by key)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def add_config_arguments(parser: Any, config_help: str, overrides_help: str) -> None:
    """The options every config-driven command shares: `--config`, `--print-config`, `key=value` overrides."""
    parser.add_argument("--config", metavar="YAML", help=config_help)
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=overrides_help)
