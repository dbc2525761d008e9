"""Search spaces over params.yaml keys and writing a chosen configuration back into params.yaml —
the parts of `medssl tune` that need neither Ray nor torch (medssl.stages.tune runs the sweep).

A space maps a params.yaml key to a value spec:

    lsd.lambda: [0.5, 1, 2, 5, 10]        grid: every value (× every other grid key)
    lsd.alpha: uniform(1.01, 3)           sampled (tune.num_samples times): uniform, loguniform,
    train.lr: loguniform(1e-5, 1e-3)      randint (lo <= n < hi), choice([a, b])
    pretrain.max_steps: 30                fixed for every trial (not a searched key)
    pica.lambda,lsd.lambda: [1, 2]        one value set on several keys (the λ of either loss)
    train.method,train.init: [[supervised, random], [fixmatch-twohead, checkpoint]]
                                          variants: each value a list, one item per key
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medssl.config import Params, build_params
from medssl.errors import ConfigError
from medssl.fileio import atomic_write_text

SEED_KEY = "seed"
SEED_TARGETS = ("pretrain.seed", "train.seed")  # a trial's seed: every stage it runs
KINDS = ("grid", "fixed", "uniform", "loguniform", "randint", "choice")
_FUNCTION = re.compile(r"^\s*(uniform|loguniform|randint|choice)\s*\((.*)\)\s*$", re.S)
# what a trial reads: the loop stages, evaluate and the methods' sections (data, split … are the
# dataset's, fixed before the sweep; tune is the sweep itself)
_SWEEPABLE = ("pretrain", "train", "evaluate")


@dataclass(frozen=True)
class Dimension:
    """One key of the space: `targets` are the params.yaml keys it sets."""

    key: str
    targets: tuple[str, ...]
    kind: str
    values: tuple[Any, ...]  # grid/choice: the values; ranges: (lo, hi); fixed: (value,)

    @property
    def searched(self) -> bool:
        return self.kind != "fixed"

    @property
    def zipped(self) -> bool:
        """A grid of variants: every value is a list with one item per target key."""
        return (
            len(self.targets) > 1
            and self.kind in ("grid", "choice")
            and all(isinstance(v, list) and len(v) == len(self.targets) for v in self.values)
        )

    @property
    def short(self) -> str:
        """A short name for run names and plot labels: `lambda` for `pica.lambda,lsd.lambda`."""
        leaves = dict.fromkeys(t.rsplit(".", 1)[-1] for t in self.targets)
        return ",".join(leaves)

    def candidates(self) -> tuple[Any, ...]:
        """Values that must validate before any trial starts (a range: both ends)."""
        if self.kind == "randint":
            return (self.values[0], self.values[1] - 1)
        return self.values

    def ray(self) -> Any:
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "fixed":
            return self.values[0]
        return getattr(tune, self.kind)(*self.values)

    def describe(self) -> str:
        if self.kind in ("grid", "choice"):
            shown = ", ".join(value_text(v) for v in self.values)
            return f"{self.key} ∈ {{{shown}}}" + (" (sampled)" if self.kind == "choice" else "")
        if self.kind == "fixed":
            return f"{self.key} = {value_text(self.values[0])}"
        return f"{self.key} ~ {self.kind}({self.values[0]:g}, {self.values[1]:g})"


def parse_value(key: str, value: Any) -> Dimension:
    """One space entry (a YAML value or a `-S key=...` text) as a Dimension."""
    targets = tuple(t.strip() for t in key.split(","))
    if not key.strip() or any(not t or "." not in t for t in targets):
        raise ConfigError(f"tune space key {key!r}: expected section.key (or k1,k2 for a tie)")
    from medssl.config import method_sections

    sweepable = (*_SWEEPABLE, *method_sections())
    outside = [t for t in targets if t.split(".")[0] not in sweepable]
    if outside:
        raise ConfigError(
            f"tune space key {key!r}: a trial does not read {outside[0].split('.')[0]}.* "
            f"(sweepable sections: {', '.join(sweepable)})"
        )
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"tune space {key}: an empty grid")
        _check_variants(key, targets, value)
        return Dimension(key, targets, "grid", tuple(value))
    if isinstance(value, str) and (m := _FUNCTION.match(value)):
        kind, args = m.group(1), m.group(2)
        try:
            parsed = yaml.safe_load(f"[{args}]")
        except yaml.YAMLError:
            parsed = None
        if kind == "choice":
            values = parsed[0] if parsed and len(parsed) == 1 else None
            if not isinstance(values, list) or not values:
                raise ConfigError(f"tune space {key}: expected choice([a, b, ...]), got {value!r}")
            _check_variants(key, targets, values)
            return Dimension(key, targets, "choice", tuple(values))
        if isinstance(parsed, list):  # YAML reads 1e-5 (no dot) as a string
            parsed = [_number_or_text(v) for v in parsed]
        ok = (
            isinstance(parsed, list)
            and len(parsed) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in parsed)
        )
        if not ok or not parsed[0] < parsed[1]:  # type: ignore[index]
            raise ConfigError(f"tune space {key}: expected {kind}(low, high) with low < high")
        lo, hi = parsed  # type: ignore[misc]
        if kind == "loguniform" and lo <= 0:
            raise ConfigError(f"tune space {key}: loguniform needs low > 0")
        if kind == "randint" and not (isinstance(lo, int) and isinstance(hi, int)):
            raise ConfigError(f"tune space {key}: randint needs integers")
        return Dimension(key, targets, kind, (lo, hi))
    return Dimension(key, targets, "fixed", (value,))


def _check_variants(key: str, targets: tuple[str, ...], values: list[Any]) -> None:
    """Several keys with list values are variants: each must have one item per key."""
    if len(targets) < 2 or not any(isinstance(v, list) for v in values):
        return
    for i, v in enumerate(values):
        if not isinstance(v, list) or len(v) != len(targets):
            n = len(v) if isinstance(v, list) else 1
            raise ConfigError(
                f"tune space {key}: variant {i + 1} has {n} item(s) for {len(targets)} keys"
            )


def parse_cli_space(items: Iterable[str]) -> dict[str, Any]:
    """`-S key=value` texts → {key: value} (values parsed as YAML, like params overrides)."""
    out: dict[str, Any] = {}
    for text in items:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"-S {text!r}: expected section.key=value (a grid: key=[a,b])")
        raw = raw.strip()
        if _FUNCTION.match(raw):
            out[key.strip()] = raw
            continue
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def build_space(space: Mapping[str, Any], seeds: int) -> list[Dimension]:
    """The dimensions of a space (the seed grid last); one-line errors for malformed entries,
    a key given twice, or nothing to search."""
    dims = [parse_value(key, value) for key, value in space.items()]
    seen: dict[str, str] = {}
    for dim in dims:
        for target in dim.targets:
            if target in seen:
                raise ConfigError(
                    f"tune space: {target} is set by both {seen[target]} and {dim.key}"
                )
            seen[target] = dim.key
    if seeds > 1:
        clash = [t for t in SEED_TARGETS if t in seen]
        if clash:
            raise ConfigError(f"tune space: {clash[0]} is swept and tune.seeds={seeds} sets it too")
        dims.append(Dimension(SEED_KEY, SEED_TARGETS, "grid", tuple(range(seeds))))
    sampled = [d.key for d in dims if d.searched and d.kind != "grid"]
    if seeds > 1 and sampled:
        raise ConfigError(
            f"tune.seeds={seeds} with the sampled key {sampled[0]}: Ray draws it anew for every "
            "seed, so no configuration is repeated over seeds; use a grid, or seeds 1"
        )
    if not any(d.searched for d in dims):
        raise ConfigError(
            "tune: nothing to search: give a grid or a range (-S lsd.lambda=[1,2,5], "
            "-S train.lr='loguniform(1e-5,1e-3)'), --seeds N, or --preset NAME"
        )
    return dims


def refuse_test_metric(metric: str, what: str) -> None:
    """A configuration that will be used (written back, registered) must not be chosen by a
    number measured on the test split."""
    if metric.startswith("test_"):
        raise ConfigError(
            f"{what}: tune.metric {metric} is measured on the test split; choosing a "
            "configuration by it leaks the test set into the model: sweep on a val_ metric"
        )


def assignments(dim: Dimension, value: Any) -> dict[str, Any]:
    """{params key: value} of one value of `dim` (a variant: item by item)."""
    if dim.zipped:
        return dict(zip(dim.targets, value, strict=True))
    return dict.fromkeys(dim.targets, value)


def override_texts(values: Mapping[str, Any]) -> list[str]:
    """{params key: value} → `key=value` overrides (JSON is YAML: types survive)."""
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def validate_space(base: Mapping[str, Any], dims: list[Dimension]) -> None:
    """Every value of every dimension applied to the base config must validate (one line naming
    the space key otherwise), before Ray starts anything."""
    for dim in dims:
        for value in dim.candidates():
            try:
                build_params(dict(base), override_texts(assignments(dim, value)))
            except ConfigError as exc:
                raise ConfigError(f"tune space {dim.key}={value_text(value)}: {exc}") from None


def trial_values(config: Mapping[str, Any], dims: list[Dimension]) -> dict[str, Any]:
    """A Ray trial config ({space key: value}) → {params key: value} for every dimension."""
    out: dict[str, Any] = {}
    for dim in dims:
        out.update(assignments(dim, config[dim.key] if dim.key in config else dim.values[0]))
    return out


def trial_name(config: Mapping[str, Any], dims: list[Dimension]) -> str:
    """`method=pica lambda=2 seed=0`: the searched values, by short name."""
    parts = [f"{d.short}={value_text(config.get(d.key))}" for d in dims if d.searched]
    return " ".join(parts)


def base_config(params: Params) -> dict[str, Any]:
    """The resolved config every trial starts from (without the tune section)."""
    dump = params.dump()
    dump.pop("tune", None)
    return dump


def value_text(value: Any) -> str:
    if isinstance(value, list | tuple):  # a variant: its items
        return "/".join(value_text(v) for v in value)
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ---------------------------------------------------------------------------------------------
# --apply: a configuration back into params.yaml, comments and layout kept


def apply_to_params(path: Path, values: Mapping[str, Any]) -> list[str]:
    """Write {section.key: value} into the params file in place (the line's comment, the line
    endings and the rest of the file unchanged; a missing key is added to its section) and check
    that the file then loads with exactly these values. Returns the changed keys."""
    path = Path(path)
    try:
        text = path.read_bytes().decode()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--apply: cannot read {path} ({exc})") from None
    lines = text.splitlines(keepends=True)
    nl = "\r\n" if "\r\n" in text else "\n"
    changed = []
    for key, value in values.items():
        section, _, leaf = key.partition(".")
        if not leaf or "." in leaf:
            raise ConfigError(f"--apply: {key}: only section.key values can be written back")
        if _set_line(lines, section, leaf, _yaml_scalar(value), nl, path):
            changed.append(key)
    new_text = "".join(lines)
    if new_text == text:
        return []
    try:
        checked = yaml.safe_load(new_text) or {}
    except yaml.YAMLError:
        raise ConfigError(f"--apply: {path} would not be valid YAML: set {key} by hand") from None
    for key, value in values.items():
        section, _, leaf = key.partition(".")
        got = (checked.get(section) or {}).get(leaf)
        if got != value and not (
            _is_number(got) and _is_number(value) and math.isclose(got, value)
        ):
            raise ConfigError(f"--apply: {path} would read {key}={got!r}, not {value!r}")
    try:
        build_params(checked)
    except ConfigError as exc:
        raise ConfigError(f"--apply: {path} would no longer load: {exc}") from None
    atomic_write_text(path, new_text)
    return changed


def _set_line(lines: list[str], section: str, leaf: str, value: str, nl: str, path: Path) -> bool:
    block = re.compile(rf"^{re.escape(section)}:\s*(#.*)?$")
    header = re.compile(rf"^{re.escape(section)}:")
    heads = [i for i, line in enumerate(lines) if header.match(line)]
    if len(heads) > 1 or (heads and not block.match(lines[heads[0]].rstrip("\r\n"))):
        raise ConfigError(
            f"--apply: section {section!r} of {path} is not one block mapping (flow style, an "
            f"anchor or twice): set {section}.{leaf}={value} by hand"
        )
    if not heads:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += nl
        lines.extend([nl, f"{section}:{nl}", f"  {leaf}: {value}{nl}"])
        return True
    start = heads[0]
    indent, last = None, start
    for i in range(start + 1, len(lines)):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            continue
        current = len(lines[i]) - len(lines[i].lstrip(" "))
        if current == 0:
            break
        last = i  # the section's last line (a nested block's too)
        if indent is None:
            indent = current
        if current == indent:
            body = lines[i].rstrip("\r\n")
            newline = lines[i][len(body) :]
            m = re.match(rf"^(\s*{re.escape(leaf)}:)(\s*)([^#'\"]*?)(\s*)(#.*)?$", body)
            if m:
                old = m.group(3)
                if old == value:
                    return False
                pad = max(1, len(m.group(2)) + len(old) + len(m.group(4)) - len(value) - 1)
                comment = f"{' ' * pad}{m.group(5)}" if m.group(5) else ""
                lines[i] = f"{m.group(1)} {value}{comment}{newline}"
                return True
            if re.match(rf"^\s*{re.escape(leaf)}:", body):  # a quoted value: not rewritten
                raise ConfigError(f"--apply: {path}: set {section}.{leaf}={value} by hand")
    if not lines[last].endswith("\n"):
        lines[last] += nl
    lines.insert(last + 1, f"{' ' * (indent or 2)}{leaf}: {value}{nl}")
    return True


def _yaml_scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _number_or_text(value: Any) -> Any:
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return (
            int(number)
            if number.is_integer() and "." not in value and "e" not in value.lower()
            else number
        )
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
