"""The best mean return any policy can score on Taxi's evaluation episodes: value iteration on its table.

    python benchmarks/taxi_optimum.py                       # validation (2000 from 1000000) and test (100 from 2000000)
    python benchmarks/taxi_optimum.py --episodes 100 --seed 1000000

Taxi is deterministic, so an episode's best return is the optimal value of its start state, and an
evaluation's best mean is the mean over its seeds' start states. ``configs/taxi.yaml`` stops a hair
under the validation optimum; a greedy policy is solved on the test seeds at Taxi's
``reward_threshold`` of 8, which their optimum (8.18) leaves 0.18 above, less than one failed
episode (about -2 in the mean of 100).
"""

import argparse

import gymnasium as gym
import numpy as np


def optimal_values(env: gym.Env) -> np.ndarray:
    """V*(s) for every state ``[n_states]``: undiscounted return of the best path to the episode's end."""
    table = env.unwrapped.P
    values = np.zeros(len(table))
    while True:
        new = np.array(
            [
                max(r + (0.0 if done else values[s2]) for _, s2, r, done in (t[0] for t in table[s].values()))
                for s in table
            ]
        )
        if np.array_equal(new, values):
            return values
        values = new


def optimum(env: gym.Env, values: np.ndarray, episodes: int, seed: int) -> float:
    """The best mean return over the episodes that start from seeds ``seed, ..., seed + episodes - 1``."""
    return float(np.mean([values[env.reset(seed=seed + k)[0]] for k in range(episodes)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, help="episodes of one evaluation (default: both of the config's)")
    parser.add_argument("--seed", type=int, default=1_000_000, help="env seed of the first episode")
    args = parser.parse_args()
    env = gym.make("Taxi-v4")
    values = optimal_values(env)
    starts = [s for s in range(len(values)) if env.unwrapped.initial_state_distrib[s] > 0]
    print(f"all {len(starts)} start states: {np.mean(values[starts]):.4f}")
    runs = [(args.episodes, args.seed)] if args.episodes else [(2000, 1_000_000), (100, 1_000_000), (100, 2_000_000)]
    for episodes, seed in runs:
        print(f"{episodes} episodes from seed {seed}: {optimum(env, values, episodes, seed):.4f}")


if __name__ == "__main__":
    main()
