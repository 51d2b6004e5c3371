"""The three networks of the system, described once (Dhariwal & Nichol 2021, Sec. 4 and 2.3).

* diffusion: the ADM UNet, trained with the hybrid loss on x_t at uniform t; registered and sampled from.
* classifier: the noisy classifier p(y | x_t, t) that guides sampling, trained with cross-entropy on x_t; registered.
* evaluator: a classifier of clean images (t = 0) that only scores samples, never guides; not registered.

Code that must treat the networks differently asks this table (`kind.noised`, `kind.is_unet`, `kind.registered`)
instead of comparing names. Pure Python like all of config/: the CLI lists the kinds; components.networks.build
makes the network of a kind.
"""

from dataclasses import dataclass

from .sections import ConfigError


@dataclass(frozen=True)
class NetworkKind:
    name: str
    network_section: str  # the Preset field holding its architecture (UNetConfig or ClassifierConfig)
    is_unet: bool  # built as the UNet (eps and variance out), else as the encoder classifier (logits out)
    noised: bool  # trained on x_t ~ q(x_t | x_0) at sampled t; False: clean images at t = 0
    registered: bool  # registered in the model registry, and promoted to champion, by each pipeline run

    @property
    def train_section(self) -> str:
        return f"train_{self.name}"

    def network_config(self, preset):
        return getattr(preset, self.network_section)

    def train_config(self, preset):
        return getattr(preset, self.train_section)


DIFFUSION = NetworkKind("diffusion", "unet", is_unet=True, noised=True, registered=True)
CLASSIFIER = NetworkKind("classifier", "classifier", is_unet=False, noised=True, registered=True)
EVALUATOR = NetworkKind("evaluator", "evaluator", is_unet=False, noised=False, registered=False)
KINDS = {k.name: k for k in (DIFFUSION, CLASSIFIER, EVALUATOR)}
REGISTERED = tuple(k for k in KINDS.values() if k.registered)


def has_null_class(preset) -> bool:
    """Whether the preset's diffusion model learns the null label of classifier-free guidance: trained with label
    dropout (train_diffusion.label_dropout > 0), it has the extra label row and can run unconditionally."""
    return preset.unet.num_classes is not None and preset.train_diffusion.label_dropout > 0


def kind(name: str) -> NetworkKind:
    if name not in KINDS:
        raise ConfigError(f"unknown network {name!r}; the networks are {', '.join(KINDS)}")
    return KINDS[name]
