"""Values from text: `--override section.field=value`, the CLI flags that are shortcuts for one field, and the comma
lists of the released code's flags. Every bad item is reported with the field, the value and the fix."""

import dataclasses
import math
import re

from .sections import AUTO, CASCADE_SECTIONS, GUIDE_SECTIONS, ConfigError, Preset


def parse_ints(text: str | tuple | list, name: str) -> tuple[int, ...]:
    if isinstance(text, (tuple, list)):
        return tuple(int(x) for x in text)
    try:
        return tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a comma-separated list of integers, e.g. '32,16,8'") from None


def parse_mult(text: str | tuple | list) -> tuple[float, ...]:
    if isinstance(text, (tuple, list)):
        return tuple(float(x) if float(x) != int(float(x)) else int(float(x)) for x in text)
    return parse_mult([x for x in str(text).split(",") if x.strip()])



def _number(text: str, whole: bool):
    """A whole or finite number from text; ValueError with a message that says which (not int()'s parse error)."""
    if whole:
        if not re.fullmatch(r"[+-]?\d+", text):
            raise ValueError(f"{text!r} is not a whole number")
        return int(text)
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def _items(text: str) -> list[str]:
    """Comma-separated items; '' is none, and an empty item (`1,,2`) is a mistake rather than something to drop."""
    if not text.strip():
        return []
    items = [x.strip() for x in text.split(",")]
    if not all(items):
        raise ValueError(f"{text!r} has an empty item; separate values with single commas, e.g. 0,1,2")
    return items


def _coerce(value: str, current, texts: bool = False):
    """`value` as the type of `current`; `texts`: a tuple of strings (e.g. data.splits, also when it is empty)."""
    if isinstance(current, bool):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError("expected true or false")
        return value.lower() in ("true", "1", "yes")
    if isinstance(current, tuple):
        items = _items(value)
        if texts or (current and all(isinstance(x, str) for x in current)):
            return tuple(items)  # e.g. data.splits=train,test
        return tuple(_number(x, whole=bool(re.fullmatch(r"[+-]?\d+", x))) for x in items)
    if value.lower() == "none" and current is None:
        return None
    if current is None:  # an unset number (e.g. sample.actor_cpus=1.5)
        return _number(value, whole=bool(re.fullmatch(r"[+-]?\d+", value)))
    if isinstance(current, (int, float)):
        return _number(value, whole=isinstance(current, int))
    return value


def apply_overrides(preset: Preset, overrides: list[str]) -> Preset:
    """Apply "section.field=value" overrides (e.g. unet.model_channels=64) to a preset; every bad one is reported."""
    problems = []
    for item in overrides:
        try:
            preset = _apply_override(preset, item)
        except ConfigError as e:
            problems.append(str(e))
    if len(problems) > 1:
        raise ConfigError(f"{len(problems)} overrides are invalid:\n  - " + "\n  - ".join(problems))
    if problems:
        raise ConfigError(problems[0])
    return preset


def _apply_override(preset: Preset, item: str) -> Preset:
    key, sep, value = item.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot:
        raise ConfigError(f"override {item!r} must look like section.field=value, e.g. unet.model_channels=64")
    sections = {f.name for f in dataclasses.fields(preset) if dataclasses.is_dataclass(getattr(preset, f.name))}
    if section in CASCADE_SECTIONS and section not in sections:
        raise ConfigError(f"override {item!r}: preset {preset.name} has no cascade, so no {section} section; start "
                          "from a cascade preset (e.g. --preset fashion-mnist-cascade)")
    if section in GUIDE_SECTIONS and section not in sections:
        raise ConfigError(f"override {item!r}: preset {preset.name} has no guide network, so no {section} section; "
                          "start from a preset with one (e.g. --preset fashion-mnist-autoguide)")
    if section not in sections:
        raise ConfigError(f"override {item!r}: unknown section {section!r}; sections are {sorted(sections)}")
    changed = override_field(section, getattr(preset, section), name, value, item)
    return dataclasses.replace(preset, **{section: changed})


def override_section(section: str, sub, values: dict):
    """`sub` (the config section called `section`) with fields set from text, as `--override section.field=value`
    would set them: how CLI flags that are shortcuts for one config field apply (e.g. adm sample --num-samples)."""
    for name, value in values.items():
        sub = override_field(section, sub, name, str(value), f"{section}.{name}={value}")
    return sub


# older names that still read: the single-sampler form (`sample.sampler=250`, also DDPM sections "10,10,5" whole)
ALIASES = {("sample", "sampler"): "samplers"}


# numbers that may also be chosen by the run itself
AUTO_FIELDS = {("evaluate", "champion_scale")}


def override_field(section: str, sub, name: str, value: str, item: str):
    names = [f.name for f in dataclasses.fields(sub)]
    if (section, name) in ALIASES:
        return dataclasses.replace(sub, **{ALIASES[section, name]: (value.strip(),)})
    if (section, name) in AUTO_FIELDS:
        try:
            chosen = AUTO if value.strip().lower() == AUTO else _number(value.strip(), whole=False)
        except ValueError as e:
            raise ConfigError(f"override {item!r}: bad value for {section}.{name} ({e}; or auto)") from None
        return dataclasses.replace(sub, **{name: chosen})
    if name not in names:
        raise ConfigError(f"override {item!r}: {section} has no field {name!r}; fields are {names}")
    declared = str(next(f.type for f in dataclasses.fields(sub) if f.name == name))
    optional = "None" in declared
    try:
        new_value = None if optional and value.strip().lower() == "none" else \
            _coerce(value.strip(), getattr(sub, name), texts=declared.startswith("tuple[str"))
    except ValueError as e:
        raise ConfigError(f"override {item!r}: bad value for {section}.{name} ({e})") from None
    return dataclasses.replace(sub, **{name: new_value})

