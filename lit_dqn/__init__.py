"""Deep Q-learning for Gymnasium, as a PyTorch Lightning project."""

from lit_dqn.buffer import ReplayBuffer
from lit_dqn.data import GymDataModule
from lit_dqn.episodes import EpisodeStatistics
from lit_dqn.module import DQN

__all__ = ["DQN", "EpisodeStatistics", "GymDataModule", "ReplayBuffer"]
__version__ = "0.1.0"
