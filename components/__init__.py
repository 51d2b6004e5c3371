"""Pure PyTorch components of ADM / ADM-G (Dhariwal & Nichol 2021). No Ray or MLflow imports here.

Importing the package is free: the network builders below load torch on first use, so light commands that only read
configs (`adm presets`, `adm --help`) never import it.
"""

__all__ = ["build_classifier", "build_superres", "build_unet", "classifier_from_flags", "model_from_flags",
           "superres_from_flags"]


def __getattr__(name: str):
    if name in __all__:
        from . import networks  # noqa: PLC0415 (importing the package stays free of torch)

        return getattr(networks, name)
    raise AttributeError(f"module 'components' has no attribute {name!r}")
