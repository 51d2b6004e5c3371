"""The networks of the system, described once (Dhariwal & Nichol 2021, Sec. 4, 2.3 and 5.2).

* diffusion: the ADM UNet, trained with the hybrid loss on x_t at uniform t; registered and sampled from.
* classifier: the noisy classifier p(y | x_t, t) that guides sampling, trained with cross-entropy on x_t; registered.
* evaluator: a classifier of clean images (t = 0) that only scores samples, never guides; not registered.
* upsampler: ADM-U, the super-resolution UNet of a cascade, trained with the hybrid loss on (clean image, its area
  downsample) pairs under its own diffusion process; registered with the others; only in cascade presets.
* guide: autoguidance's guide (Karras et al. 2024), a smaller UNet trained like the diffusion model, for fewer steps,
  beside it; registered with the others; only in presets with a guide section (sample.guide_from=trained).

Code that must treat the networks differently asks this table (`kind.noised`, `kind.is_unet`, `kind.registered`,
`kind.present(preset)`) instead of comparing names; a loop over the networks of a preset takes `preset_kinds`.
Pure Python like all of config/: the CLI lists the kinds; components.networks.build_network makes the network of a
kind.
"""

from dataclasses import dataclass

from .sections import ConfigError


@dataclass(frozen=True)
class NetworkKind:
    name: str
    network_section: str  # the Preset field holding its architecture (UNetConfig, UpsamplerConfig, ClassifierConfig)
    is_unet: bool  # built as the UNet (eps and variance out), else as the encoder classifier (logits out)
    noised: bool  # trained on x_t ~ q(x_t | x_0) at sampled t; False: clean images at t = 0
    registered: bool  # registered in the model registry, and promoted to champion, by each pipeline run
    process_section: str = "diffusion"  # the Preset field of the diffusion process it is trained (and sampled) under
    upsamples: bool = False  # conditioned on a low-resolution image (model_kwargs low_res): trains on downsampled pairs
    only_in: str = "every preset"  # which presets have it (those with its network section), for error messages

    @property
    def train_section(self) -> str:
        return f"train_{self.name}"

    def network_config(self, preset):
        return getattr(preset, self.network_section)

    def train_config(self, preset):
        return getattr(preset, self.train_section)

    def process_config(self, preset):
        return getattr(preset, self.process_section)

    def present(self, preset) -> bool:
        """Whether `preset` has this network (the upsampler: only cascade presets; the guide: presets with one)."""
        return getattr(preset, self.network_section, None) is not None


DIFFUSION = NetworkKind("diffusion", "unet", is_unet=True, noised=True, registered=True)
CLASSIFIER = NetworkKind("classifier", "classifier", is_unet=False, noised=True, registered=True)
EVALUATOR = NetworkKind("evaluator", "evaluator", is_unet=False, noised=False, registered=False)
UPSAMPLER = NetworkKind("upsampler", "upsampler", is_unet=True, noised=True, registered=True,
                        process_section="upsampler_diffusion", upsamples=True,
                        only_in="cascade presets (with an upsampler section, e.g. fashion-mnist-cascade)")
GUIDE = NetworkKind("guide", "guide", is_unet=True, noised=True, registered=True,
                    only_in="presets with a guide section (e.g. fashion-mnist-autoguide)")
KINDS = {k.name: k for k in (DIFFUSION, CLASSIFIER, EVALUATOR, UPSAMPLER, GUIDE)}
REGISTERED = tuple(k for k in KINDS.values() if k.registered)


def preset_kinds(preset) -> tuple[str, ...]:
    """The names of the networks `preset` has, in the table's order (the three; the upsampler in a cascade, the guide
    where the preset has one)."""
    return tuple(name for name, k in KINDS.items() if k.present(preset))


def has_null_class(preset, kind: "NetworkKind | str" = DIFFUSION) -> bool:
    """Whether the preset's UNet of `kind` (default the diffusion model) learns the null label of classifier-free
    guidance: trained with label dropout (train_<kind>.label_dropout > 0), it has the extra label row and can run
    unconditionally. Only the diffusion model may (validation.py); the upsampler is sampled unguided."""
    kind = KINDS[kind] if isinstance(kind, str) else kind
    if not kind.is_unet or not kind.present(preset):
        return False
    return kind.network_config(preset).num_classes is not None and kind.train_config(preset).label_dropout > 0


def has_noise_level(preset, kind: "NetworkKind | str" = UPSAMPLER) -> bool:
    """Whether the preset's upsampler takes the level of its conditioning augmentation (train_upsampler.low_res_noise
    > 0): one more embedding beside the timestep's. Off, the network has the released layout."""
    kind = KINDS[kind] if isinstance(kind, str) else kind
    return kind.upsamples and kind.present(preset) and kind.train_config(preset).low_res_noise > 0


def kind(name: str) -> NetworkKind:
    if name not in KINDS:
        raise ConfigError(f"unknown network {name!r}; the networks are {', '.join(KINDS)}")
    return KINDS[name]


def kind_of(preset, name: str) -> NetworkKind:
    """The kind `name`, which `preset` must have: ConfigError naming the presets that have it."""
    found = kind(name)
    if not found.present(preset):
        raise ConfigError(f"preset {preset.name} has no {name} network: only {found.only_in} train one")
    return found
