"""Compute accounting of one sampling call, per sample: what each cell of the grid cost (Dhariwal & Nichol 2021 compare
guided sampling at equal steps; the paper's Table 6 and every later sampler compare at equal network evaluations).

The sampling loops count diffusion-network evaluations (every row, every evaluation); the guidance terms count the
rows they ran an extra network on (the classifier's passes, classifier-free guidance's second pass, autoguidance's
guiding network).
"""


class SampleCost:
    """Compute of one sampling call, per sample: diffusion-network evaluations and classifier forward+backward passes.
    The loops count the network (every row, every evaluation); ClassifierGuidance counts only the rows it ran the
    classifier on (guided rows inside their guidance interval)."""

    def __init__(self, num_samples: int):
        self.network_evals = [0] * num_samples
        self.classifier_passes = [0] * num_samples
        self.guide_evals = [0] * num_samples  # autoguidance: the guiding network's evaluations, counted apart

    def add_network_eval(self) -> None:
        self.network_evals = [n + 1 for n in self.network_evals]

    def add_network_evals(self, rows) -> None:
        """One more evaluation for the rows marked True (the unconditional pass of classifier-free guidance)."""
        rows = rows.tolist() if hasattr(rows, "tolist") else list(rows)
        self.network_evals = [n + int(bool(r)) for n, r in zip(self.network_evals, rows, strict=True)]

    def add_guide_evals(self, rows) -> None:
        """One evaluation of autoguidance's guiding network for the rows marked True (a smaller network: its cost
        is not the main model's)."""
        rows = rows.tolist() if hasattr(rows, "tolist") else list(rows)
        self.guide_evals = [n + int(bool(r)) for n, r in zip(self.guide_evals, rows, strict=True)]

    def add_classifier_passes(self, rows) -> None:
        """rows: a bool sequence (or 1-D bool tensor) over the batch, True where the classifier ran."""
        rows = rows.tolist() if hasattr(rows, "tolist") else list(rows)
        self.classifier_passes = [n + int(bool(r)) for n, r in zip(self.classifier_passes, rows, strict=True)]
