"""Timestep samplers for training (Nichol & Dhariwal 2021, Sec. 3.3 "importance sampling" of L_vlb).

``uniform``: t ~ U{0..T-1}, weight 1. ``loss-second-moment``: p_t proportional to sqrt(E[L_t^2]) over the last 10
losses seen at each t (uniform until every t has 10), mixed with 0.1% uniform, with importance weights 1 / (T p_t).
"""

import numpy as np
import torch

from .config import ConfigError
from .config.sections import SCHEDULE_SAMPLERS


class UniformSampler:
    def __init__(self, num_timesteps: int, seed: int = 0):
        self.num_timesteps = num_timesteps
        self.rng = np.random.default_rng(seed)

    def weights(self) -> np.ndarray:
        return np.ones(self.num_timesteps)

    def sample(self, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(t [B] long, importance weights [B] float)."""
        w = self.weights()
        p = w / w.sum()
        indices = self.rng.choice(len(p), size=(batch_size,), p=p)
        weights = 1 / (len(p) * p[indices])
        return (torch.from_numpy(indices).long().to(device), torch.from_numpy(weights).float().to(device))

    def update(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        pass

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class LossSecondMomentResampler(UniformSampler):
    def __init__(self, num_timesteps: int, seed: int = 0, history_per_term: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps, seed)
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self.loss_history = np.zeros((num_timesteps, history_per_term), dtype=np.float64)
        self.loss_counts = np.zeros(num_timesteps, dtype=int)

    def warmed_up(self) -> bool:
        return bool((self.loss_counts == self.history_per_term).all())

    def weights(self) -> np.ndarray:
        if not self.warmed_up():
            return np.ones(self.num_timesteps, dtype=np.float64)
        w = np.sqrt(np.mean(self.loss_history**2, axis=-1))
        w /= w.sum()
        return w * (1 - self.uniform_prob) + self.uniform_prob / len(w)

    def update(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-example losses (all ranks' losses, gathered by the caller in distributed training)."""
        for t, loss in zip(timesteps.tolist(), losses.detach().float().tolist()):
            if self.loss_counts[t] == self.history_per_term:
                self.loss_history[t, :-1] = self.loss_history[t, 1:]
                self.loss_history[t, -1] = loss
            else:
                self.loss_history[t, self.loss_counts[t]] = loss
                self.loss_counts[t] += 1

    def state_dict(self) -> dict:
        return {**super().state_dict(), "history": self.loss_history.tolist(), "counts": self.loss_counts.tolist()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.loss_history = np.asarray(state["history"], dtype=np.float64)
        self.loss_counts = np.asarray(state["counts"], dtype=int)


def create_timestep_sampler(name: str, num_timesteps: int, seed: int = 0) -> UniformSampler:
    if name == "uniform":
        return UniformSampler(num_timesteps, seed)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(num_timesteps, seed)
    raise ConfigError(f"schedule_sampler={name!r} is unknown; use one of {', '.join(SCHEDULE_SAMPLERS)}")
