"""Timestep respacing (Nichol & Dhariwal 2021, Sec. 4): which of the T trained timesteps a shorter process keeps.

Pure Python (no torch, no NumPy): config validation checks a sampler's respacing against the trained steps with it,
and light commands (``adm config``) must not load torch. diffusion.create_diffusion builds the respaced process.
"""

from .sections import ConfigError


def space_timesteps(num_steps: int, section_counts: str) -> list[int]:
    """Timesteps kept by a respacing string: "ddimN" (even stride), or comma-separated counts per equal section."""
    if section_counts.startswith("ddim"):
        desired = int(section_counts[len("ddim"):])
        for stride in range(1, num_steps):
            if len(range(0, num_steps, stride)) == desired:
                return list(range(0, num_steps, stride))
        raise ConfigError(f"respacing {section_counts!r}: no integer stride gives {desired} of {num_steps} steps")
    try:
        counts = [int(x) for x in section_counts.split(",")]
    except ValueError:
        raise ConfigError(f"respacing {section_counts!r} must be 'ddimN' or comma-separated integers") from None
    size_per, extra = divmod(num_steps, len(counts))
    start, steps = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count or count < 1:
            raise ConfigError(f"respacing {section_counts!r}: cannot take {count} steps from a section of {size}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0  # accumulated as the released code does, so rounding matches it exactly
        for _ in range(count):
            steps.append(start + round(position))
            position += stride
        start += size
    return sorted(set(steps))
