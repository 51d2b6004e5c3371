"""Pure PyTorch components of ADM / ADM-G (Dhariwal & Nichol 2021). No Ray or MLflow imports here."""

from .models import build_classifier, build_unet, classifier_from_flags, model_from_flags

__all__ = ["build_classifier", "build_unet", "classifier_from_flags", "model_from_flags"]
