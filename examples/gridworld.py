"""A small env of your own, the way lit_dqn expects one: registered when its module is imported.

    python -m lit_dqn fit --config examples/gridworld.yaml

The config names the env ``examples.gridworld:GridWorld-v0``: Gymnasium imports this module (from
the current directory), which registers the id, and ``data.env_kwargs`` sets its ``size``. The
agent starts in a random cell of the left column and must reach the bottom-right corner; the
observation is the cell's number (``Discrete``, which lit_dqn one-hot encodes) and the moves that
would leave the grid are masked (``info["action_mask"]``, read with ``data.action_masks: true``).
"""

from typing import Any

import gymnasium as gym
import numpy as np

MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]])  # up, right, down, left as (row, column) steps


class GridWorld(gym.Env):
    """``size`` x ``size`` cells; reward 1 on reaching the goal, which ends the episode. An episode
    is cut (truncated) after twice the longest shortest path, ``4 * (size - 1)`` moves.

    Args:
        size: cells per side; the goal is ``2 * (size - 1)`` moves from the farthest start.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}  # noqa: RUF012 (Gymnasium's convention)

    def __init__(self, size: int = 5, render_mode: str | None = None) -> None:
        if size < 2:
            raise ValueError(f"size={size} must be at least 2")
        self.size = size
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Discrete(size * size)
        self.action_space = gym.spaces.Discrete(len(MOVES))
        self.cell = np.zeros(2, dtype=np.int64)

    def _observe(self) -> tuple[int, dict[str, Any]]:
        inside = np.all((self.cell + MOVES >= 0) & (self.cell + MOVES < self.size), axis=1)
        return int(self.cell[0] * self.size + self.cell[1]), {"action_mask": inside.astype(np.int8)}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[int, dict[str, Any]]:
        super().reset(seed=seed)
        self.cell = np.array([self.np_random.integers(self.size), 0])
        self.moves = 0
        return self._observe()

    def step(self, action: int) -> tuple[int, float, bool, bool, dict[str, Any]]:
        self.cell = np.clip(self.cell + MOVES[int(action)], 0, self.size - 1)
        self.moves += 1
        reached = bool(np.all(self.cell == self.size - 1))
        obs, info = self._observe()
        return obs, float(reached), reached, self.moves >= 4 * (self.size - 1), info

    def render(self) -> np.ndarray:
        """The grid as an image ``[size, size, 3]``: the agent white, the goal green."""
        frame = np.zeros((self.size, self.size, 3), dtype=np.uint8)
        frame[-1, -1] = (0, 160, 0)
        frame[self.cell[0], self.cell[1]] = 255
        return frame


gym.register("GridWorld-v0", entry_point=GridWorld)
