"""lit_dqn against Stable-Baselines3's DQN (and sb3-contrib's QR-DQN) with rl-zoo3's tuned
hyperparameters, seed by seed.

    python benchmarks/compare_sb3.py                                        # four envs, seeds 0-4
    python benchmarks/compare_sb3.py --env CartPole-v1 --seeds 0 1 2        # one env, three seeds
    python benchmarks/compare_sb3.py --env Acrobot-v1 --jobs 2              # two runs at a time
    python benchmarks/compare_sb3.py --env CartPole-v1 --config CartPole-v1=my.yaml -- --model.lr 3e-4
    python benchmarks/compare_sb3.py --env CartPole-v1 --seeds 0 --sb3-steps 2000 --threads 1   # quick check
    python benchmarks/compare_sb3.py --env LunarLander-v3 --sb3-algo dqn qrdqn \
        --config LunarLander-v3=configs/lunarlander_rainbow.yaml                  # beside both SB3 agents
    python benchmarks/compare_sb3.py --env LunarLander-v3 --sb3-algo qrdqn --seeds 1 2 --skip-lit \
        --config LunarLander-v3=configs/lunarlander_rainbow.yaml                  # SB3's runs only

Needs stable-baselines3 and sb3-contrib (``pip install -e '.[bench]'``); rl-zoo3 itself is not
needed, its hyperparameters are copied below.

For each env and seed, lit_dqn trains its config (``fit``, which stops early once the greedy
validation mean reaches the config's threshold, then tests the best checkpoint; see
``benchmark.py``'s solve table) and then SB3's DQN trains for rl-zoo3's full budget, each in a
fresh process, alternating lit_dqn / SB3 so both see the same machine load. Both agents are
scored on exactly the same held-out greedy episodes: lit_dqn's test episodes (``data.eval_episodes``
from ``data.test_seed``, never used for validation); a seed solved if that mean reaches the env's
threshold.

What the columns count differs by design: SB3 trains its whole budget and is scored on its final
policy; lit_dqn stops early and is scored on its best validation checkpoint, its wall time includes
those validations, and "solve steps" / "solve s" are the env steps and seconds to that checkpoint.
Wall times cover training only (``fit`` / ``learn``), not process startup or the test.

Extra arguments after ``--`` go to the CLI of every lit_dqn run; SB3 ignores them.
"""

import argparse
import multiprocessing as mp
import os
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import lightning
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import benchmark  # a sibling script, not a package
from benchmark import ROOT, _fmt, _peak_rss_mib, _quiet, build_cli

# Copied from rl-zoo3 2.9.2, rl_zoo3/hyperparams/dqn.yml (policy 'MlpPolicy' for all four; policy_kwargs
# there is the string "dict(net_arch=[256, 256])"). n_timesteps is the budget given to learn(); the
# rest are DQN's keyword arguments. gradient_steps -1: as many gradient steps as env steps per rollout.
RL_ZOO3_DQN: dict[str, dict[str, Any]] = {
    "CartPole-v1": {
        "n_timesteps": 50_000,
        "learning_rate": 2.3e-3,
        "batch_size": 64,
        "buffer_size": 100_000,
        "learning_starts": 1000,
        "gamma": 0.99,
        "target_update_interval": 10,
        "train_freq": 256,
        "gradient_steps": 128,
        "exploration_fraction": 0.16,
        "exploration_final_eps": 0.04,
        "policy_kwargs": {"net_arch": [256, 256]},
    },
    "Acrobot-v1": {
        "n_timesteps": 100_000,
        "learning_rate": 6.3e-4,
        "batch_size": 128,
        "buffer_size": 50_000,
        "learning_starts": 0,
        "gamma": 0.99,
        "target_update_interval": 250,
        "train_freq": 4,
        "gradient_steps": -1,
        "exploration_fraction": 0.12,
        "exploration_final_eps": 0.1,
        "policy_kwargs": {"net_arch": [256, 256]},
    },
    "MountainCar-v0": {
        "n_timesteps": 120_000,
        "learning_rate": 4e-3,
        "batch_size": 128,
        "buffer_size": 10_000,
        "learning_starts": 1000,
        "gamma": 0.98,
        "target_update_interval": 600,
        "train_freq": 16,
        "gradient_steps": 8,
        "exploration_fraction": 0.2,
        "exploration_final_eps": 0.07,
        "policy_kwargs": {"net_arch": [256, 256]},
    },
    "LunarLander-v3": {
        "n_timesteps": 100_000,
        "learning_rate": 6.3e-4,
        "batch_size": 128,
        "buffer_size": 50_000,
        "learning_starts": 0,
        "gamma": 0.99,
        "target_update_interval": 250,
        "train_freq": 4,
        "gradient_steps": -1,
        "exploration_fraction": 0.12,
        "exploration_final_eps": 0.1,
        "policy_kwargs": {"net_arch": [256, 256]},
    },
}

# lit_dqn's config and the solve threshold (the env's reward threshold: Gymnasium's, or the
# customary one where Gymnasium has none) for each env.
ENVS: dict[str, tuple[str, float]] = {
    "CartPole-v1": ("configs/cartpole.yaml", 475.0),
    "Acrobot-v1": ("configs/acrobot.yaml", -100.0),
    "MountainCar-v0": ("configs/mountaincar.yaml", -110.0),
    "LunarLander-v3": ("configs/lunarlander.yaml", 200.0),
}

# Copied from rl-zoo3's hyperparams/qrdqn.yml (for LunarLander-v2 there, the same game as v3 with
# bugs fixed); n_quantiles is in its policy_kwargs. "lin_1.5e-3": rl-zoo3's linear schedule, from
# 1.5e-3 at the start to 0 at the end of the budget.
RL_ZOO3_QRDQN: dict[str, dict[str, Any]] = {
    "CartPole-v1": {**RL_ZOO3_DQN["CartPole-v1"], "policy_kwargs": {"net_arch": [256, 256], "n_quantiles": 10}},
    "Acrobot-v1": {**RL_ZOO3_DQN["Acrobot-v1"], "policy_kwargs": {"net_arch": [256, 256], "n_quantiles": 25}},
    "MountainCar-v0": {**RL_ZOO3_DQN["MountainCar-v0"], "policy_kwargs": {"net_arch": [256, 256], "n_quantiles": 25}},
    "LunarLander-v3": {
        "n_timesteps": 100_000,
        "learning_rate": "lin_1.5e-3",
        "batch_size": 128,
        "buffer_size": 100_000,
        "learning_starts": 10_000,
        "gamma": 0.995,
        "target_update_interval": 1,
        "train_freq": 256,
        "gradient_steps": -1,
        "exploration_fraction": 0.24,
        "exploration_final_eps": 0.18,
        "policy_kwargs": {"net_arch": [256, 256], "n_quantiles": 170},
    },
}

LIT = "lit_dqn"
# The agents SB3 brings, by --sb3-algo: (row label, rl-zoo3's hyperparameters)
SB3_AGENTS: dict[str, tuple[str, dict[str, dict[str, Any]]]] = {
    "dqn": ("sb3 rl-zoo3", RL_ZOO3_DQN),
    "qrdqn": ("sb3 QR-DQN", RL_ZOO3_QRDQN),
}


def _learning_rate(value: float | str) -> Any:
    """rl-zoo3's ``lin_X``: a schedule of SB3's remaining progress (1 → 0), from X down to 0; held at 0
    where the last rollout runs past the budget (progress below 0), where rl-zoo3's would turn negative."""
    if isinstance(value, str) and value.startswith("lin_"):
        start = float(value.removeprefix("lin_"))
        return lambda progress_remaining: max(progress_remaining, 0.0) * start
    return value


def _progress(name: str, n_timesteps: int, stream: Any) -> Any:
    """An SB3 callback that prints a line to ``stream`` at each tenth of the budget, so a run of hours
    shows how far it got. It only reads the step counter: learning is unchanged."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Progress(BaseCallback):
        def _on_training_start(self) -> None:
            self.start = time.perf_counter()
            self.next = n_timesteps // 10

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next:
                minutes = (time.perf_counter() - self.start) / 60
                print(
                    f"{name}: {self.num_timesteps:,}/{n_timesteps:,} env steps, {minutes:.1f} min",
                    file=stream,
                )
                self.next += n_timesteps // 10
            return True

    return Progress()


def sb3_seed(job: tuple[str, str, int, float, int | None, int, int, int]) -> dict:
    """Train SB3's DQN (or sb3-contrib's QR-DQN) as rl-zoo3 does, then score its greedy policy on
    lit_dqn's test episodes."""
    algo, env_id, seed, threshold, budget, test_episodes, test_seed, threads = job
    progress = os.fdopen(os.dup(2), "w", buffering=1)  # the terminal, kept before _quiet() silences stderr
    _quiet()
    torch.set_num_threads(threads)
    from stable_baselines3.common.monitor import Monitor

    if algo == "qrdqn":
        from sb3_contrib import QRDQN as Algorithm
    else:
        from stable_baselines3 import DQN as Algorithm

    from lit_dqn.envs import EnvSpec
    from lit_dqn.rollout import evaluate

    hyperparams = dict(SB3_AGENTS[algo][1][env_id])
    n_timesteps = hyperparams.pop("n_timesteps")
    hyperparams["learning_rate"] = _learning_rate(hyperparams["learning_rate"])
    if budget is not None:
        n_timesteps = budget
    env = Monitor(gym.make(env_id))  # rl-zoo3 uses one env (n_envs=1) for these
    model = Algorithm("MlpPolicy", env, seed=seed, verbose=0, device="cpu", **hyperparams)
    start = time.perf_counter()
    model.learn(n_timesteps, callback=_progress(f"{SB3_AGENTS[algo][0]} {env_id} seed {seed}", n_timesteps, progress))
    learn_s = time.perf_counter() - start
    env.close()

    def greedy(obs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        return model.predict(obs, deterministic=True)[0]

    envs = EnvSpec(env_id).make_eval_vec(test_episodes)  # what GymDataModule plays its test episodes in
    test_mean = float(evaluate(envs, greedy, seed=test_seed).mean())
    envs.close()
    return {
        "seed": seed,
        "solved": test_mean >= threshold,
        "test_mean": test_mean,
        "env_steps": model.num_timesteps,  # learn() finishes its last rollout, so may pass n_timesteps
        "fit_s": learn_s,
        "solve_s": None,
        "solve_env_steps": None,
        "peak_rss_mib": _peak_rss_mib(),
    }


def _run(numbered: tuple[int, tuple[str, tuple]]) -> tuple[int, dict]:
    index, (agent, job) = numbered
    return index, {"agent": agent, **(benchmark.solve_seed(job) if agent == LIT else sb3_seed(job))}


def _row(env_id: str, r: dict) -> str:
    return (
        f"{env_id:<15} {r['agent']:<11} {r['seed']:>4} {'yes' if r['solved'] else 'no':>6} {r['test_mean']:>9.1f} "
        f"{_fmt(r['solve_env_steps'], 'd'):>11} {_fmt(r['env_steps'], 'd'):>9} {_fmt(r['solve_s'], '.1f'):>7} "
        f"{r['fit_s']:>7.1f} {r['peak_rss_mib']:>7.0f}"
    )


def lit_test_episodes(env_id: str, config: str, extra: list[str]) -> tuple[int, int]:
    """The test episodes (count, first seed) that lit_dqn's config and overrides give, so SB3 plays the
    same ones; fails early if the config trains a different env."""
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # this script's own argv
        hparams = build_cli(config, root, "cpu", extra).datamodule.hparams
    if hparams.env_id != env_id:
        sys.exit(f"{config} trains {hparams.env_id}, not {env_id}; pass --config {env_id}=PATH")
    return hparams.test_episodes or hparams.eval_episodes, hparams.test_seed


def compare_env(env_id: str, config: str, threshold: float, args: argparse.Namespace) -> None:
    """Train both agents on every seed, alternating, and print the env's table."""
    threads = args.threads or max(1, torch.get_num_threads() // args.jobs)
    test_episodes, test_seed = lit_test_episodes(env_id, config, args.extra)
    tasks: list[tuple[str, tuple]] = []
    for seed in args.seeds:
        if not args.skip_lit:
            tasks.append((LIT, (config, seed, threshold, "cpu", args.extra, threads)))
        for algo in args.sb3_algo:
            sb3_job = (algo, env_id, seed, threshold, args.sb3_steps, test_episodes, test_seed, threads)
            tasks.append((SB3_AGENTS[algo][0], sb3_job))
    # a fresh process per run (maxtasksperchild=1), so no run inherits another's memory or state
    with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
        done: dict[int, dict] = {}
        for index, r in pool.imap_unordered(_run, enumerate(tasks), chunksize=1):
            done[index] = r  # each run said as soon as it ends: a comparison stopped half-way keeps it
            print(_row(env_id, r), file=sys.stderr, flush=True)
        rows = [done[index] for index in range(len(tasks))]
        pool.close()  # let the workers exit before the pool is torn down: no leaked semaphore at exit
        pool.join()

    print(
        f"## {env_id}: solved if the mean of {test_episodes} greedy test episodes (seeds from {test_seed}) "
        f">= {threshold:g}"
    )
    lit = () if args.skip_lit else (LIT,)
    skipped = "" if lit else " (not run: --skip-lit)"
    print(f"{LIT}: {_relative(config)} {shlex.join(args.extra)}".rstrip() + skipped)
    for algo in args.sb3_algo:
        label, table = SB3_AGENTS[algo]
        budget = table[env_id]["n_timesteps"] if args.sb3_steps is None else args.sb3_steps
        print(f"{label}: {budget} env steps, { ({k: v for k, v in table[env_id].items() if k != 'n_timesteps'}) }")
    print(f"(cpu, {args.jobs} run(s) at a time, {threads} torch thread(s) each)")
    print(
        f"{'env':<15} {'agent':<11} {'seed':>4} {'solved':>6} {'test mean':>9} {'solve steps':>11} "
        f"{'env steps':>9} {'solve s':>7} {'wall s':>7} {'RSS MiB':>7}"
    )
    for r in rows:
        print(_row(env_id, r))
    for agent in (*lit, *(SB3_AGENTS[algo][0] for algo in args.sb3_algo)):
        mine = [r for r in rows if r["agent"] == agent]
        solved = sum(r["solved"] for r in mine)
        wall = statistics.median(r["fit_s"] for r in mine)
        steps = [r["env_steps"] for r in mine if r["env_steps"] is not None]
        median_steps = f"{statistics.median(steps):.0f}" if steps else "-"
        line = f"{agent}: solved {solved}/{len(mine)}, median wall {wall:.1f} s, median env steps {median_steps}"
        to_solve = [r["solve_env_steps"] for r in mine if r["solve_env_steps"] is not None]
        if to_solve:
            line += f", median env steps to solve {statistics.median(to_solve):.0f}"
        print(line)
    print(flush=True)


def _relative(path: str) -> str:
    """A config's path as the README shows it: relative to the repository when it is inside."""
    return str(Path(path).relative_to(ROOT)) if Path(path).is_relative_to(ROOT) else path


def _env_config(text: str) -> tuple[str, str]:
    env_id, sep, path = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"expected ENV=PATH, got {text!r}")
    return env_id, path


def main() -> None:
    benchmark.end_workers_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", nargs="+", default=list(ENVS), choices=list(ENVS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(5)))
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one process each")
    parser.add_argument("--threads", type=int, help="torch threads per run (default: the CPU's threads / --jobs)")
    parser.add_argument(
        "--sb3-algo", nargs="+", default=["dqn"], choices=list(SB3_AGENTS), help="SB3's agents: DQN, QR-DQN"
    )
    parser.add_argument(
        "--skip-lit",
        action="store_true",
        help="run only the SB3 agents (on lit_dqn's test episodes), e.g. to finish a comparison stopped part-way",
    )
    parser.add_argument("--sb3-steps", type=int, help="SB3's env steps instead of rl-zoo3's budget (quick tests)")
    parser.add_argument(
        "--config", type=_env_config, action="append", default=[], metavar="ENV=PATH", help="lit_dqn config for ENV"
    )
    parser.add_argument("extra", nargs="*", help="lit_dqn CLI overrides, after --")
    args = parser.parse_args()
    configs = {env_id: str(ROOT / path) for env_id, (path, _) in ENVS.items()}
    configs |= {env_id: str(Path(path).resolve()) for env_id, path in args.config}
    unknown = set(dict(args.config)) - set(ENVS)
    if unknown:
        parser.error(
            f"--config for {', '.join(sorted(unknown))}: no rl-zoo3 hyperparameters here; envs: {', '.join(ENVS)}"
        )
    import stable_baselines3  # here, not at the top: the lit_dqn workers, which import this module, do not need it

    contrib = ""
    if "qrdqn" in args.sb3_algo:
        import sb3_contrib  # fail here, before any training, if the extra is missing

        contrib = f", sb3-contrib {sb3_contrib.__version__}"

    print(f"$ python {shlex.join(sys.argv)}")
    print(
        f"torch {torch.__version__}, lightning {lightning.__version__}, stable-baselines3 "
        f"{stable_baselines3.__version__}{contrib}, gymnasium {gym.__version__}; {os.cpu_count()} CPU(s), "
        f"{torch.get_num_threads()} torch thread(s)\n",
        flush=True,
    )
    for env_id in args.env:
        compare_env(env_id, configs[env_id], ENVS[env_id][1], args)


if __name__ == "__main__":
    main()
