"""Training from pixels: throughput of the MinAtar and Atari configs, and the frame ring's memory.

    python benchmarks/pixels.py                                   # every pixel config, then the 1M-frame ring
    python benchmarks/pixels.py --configs configs/atari_pong.yaml --steps 2000
    python benchmarks/pixels.py --skip-throughput --capacity 1000000
    python benchmarks/pixels.py --device cuda                     # on a GPU

Throughput: each config trains in a fresh process (``python -m lit_dqn fit``) for ``--warmup`` +
``--steps`` updates, with ``data.warmup_steps`` cut to ``--fill`` env steps so learning starts soon,
and no validation, checkpoints or video. The timer (``ddp.DDPTimer``) starts after ``--warmup``
updates. Frames/s counts emulator frames: 4 per env step on Atari (its frame skip), 1 on MinAtar.

Memory: a ``FrameReplayBuffer`` of ``--capacity`` Atari frames (4x84x84 stacks) in a fresh process:
its bytes per frame, the process's resident memory once it is allocated, and the peak while its
state is saved to a file with ``torch.save``, which should not grow by the buffer's size.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIXEL_CONFIGS = ["configs/minatar_breakout.yaml", "configs/atari_pong.yaml", "configs/atari_breakout.yaml"]


def run_fit(config: str, steps: int, warmup: int, fill: int, device: str) -> dict[str, float]:
    """One timed ``fit`` of ``config``; the timer's figures."""
    with tempfile.TemporaryDirectory() as root:
        out = Path(root) / "timer.json"
        timer = json.dumps({"class_path": "ddp.DDPTimer", "init_args": {"out": str(out), "warmup": warmup}})
        command = [sys.executable, "-m", "lit_dqn", "fit", "--config", str(ROOT / config)]
        command += [f"--trainer.max_steps={warmup + steps}", "--trainer.val_check_interval=100000000"]
        command += ["--trainer.num_sanity_val_steps=0", "--trainer.enable_checkpointing=false"]
        command += ["--trainer.enable_progress_bar=false", f"--trainer.accelerator={device}"]
        command += [f"--trainer.callbacks=[{timer}]", f"--trainer.default_root_dir={root}"]
        command += [f"--data.warmup_steps={fill}", "--data.save_replay_buffer=false"]
        path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
        return json.loads(out.read_text())


def rss_mib() -> float:
    """This process's resident memory now, MiB (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory(capacity: int) -> None:
    """Allocate a ring of ``capacity`` Atari frames, fill a stretch of it, and save it (run in a fresh process)."""
    import numpy as np
    import torch

    from lit_dqn.frames import FrameReplayBuffer

    before = rss_mib()
    buffer = FrameReplayBuffer(capacity, (4, 84, 84), seed=0)
    allocated = rss_mib()
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, (1, 4, 84, 84), dtype=np.uint8)
    pushes = min(capacity, 20_000)
    start = time.perf_counter()
    for _ in range(pushes):
        next_obs = np.concatenate([obs[:, 1:], rng.integers(0, 256, (1, 1, 84, 84), dtype=np.uint8)], axis=1)
        buffer.push(obs, [0], [0.0], next_obs, [False])
        obs = next_obs
    push_rate = pushes / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(100):
        buffer.sample(32)
    sample_ms = (time.perf_counter() - start) * 10
    peak_before_save = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory(dir=ROOT) as folder:
        path = Path(folder) / "buffer.pt"
        start = time.perf_counter()
        torch.save(buffer.state_dict(), path)
        save_s = time.perf_counter() - start
        file_mib = path.stat().st_size / 2**20
    peak_after_save = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"frame ring of {capacity} frames (4x84x84 uint8 stacks):")
    print(
        f"  bytes per frame           {buffer.nbytes / capacity:,.0f} (a plain stacked layout: {4 * 84 * 84:,}"
        f" per transition without its next_obs copy, {2 * 4 * 84 * 84:,} with it)"
    )
    print(f"  buffer                    {buffer.nbytes / 2**30:.2f} GiB; resident {allocated - before:,.0f} MiB more")
    print(f"  push                      {push_rate:,.0f} transitions/s; sample of 32: {sample_ms:.2f} ms")
    print(
        f"  save                      {file_mib:,.0f} MiB file in {save_s:.1f} s; peak resident memory "
        f"{peak_before_save:,.0f} MiB before, {peak_after_save:,.0f} MiB after"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=PIXEL_CONFIGS)
    parser.add_argument("--steps", type=int, default=1000, help="timed updates per run")
    parser.add_argument("--warmup", type=int, default=100, help="untimed updates first")
    parser.add_argument("--fill", type=int, default=2000, help="env steps before the first update")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    parser.add_argument("--capacity", type=int, default=1_000_000, help="frames in the memory check")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory(args.capacity)
        return
    import torch

    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}; {os.cpu_count()} CPU(s), {threads} torch thread(s); {args.device}\n")
    if not args.skip_throughput:
        print(f"## Throughput ({args.steps} updates after {args.warmup}, median of {args.rounds} round(s))")
        print(f"{'config':<30} {'env steps/s':>12} {'frames/s':>9} {'updates/s':>10}")
        for config in args.configs:
            rows = [run_fit(config, args.steps, args.warmup, args.fill, args.device) for _ in range(args.rounds)]
            env_rate = statistics.median(r["env_steps_per_s"] for r in rows)
            update_rate = statistics.median(r["updates_per_s"] for r in rows)
            skip = 4 if "atari" in Path(config).stem else 1
            print(f"{config:<30} {env_rate:>12.0f} {env_rate * skip:>9.0f} {update_rate:>10.1f}", flush=True)
        print()
    if not args.skip_memory:
        print("## Memory")
        subprocess.run([sys.executable, __file__, "--memory-child", f"--capacity={args.capacity}"], check=True)


if __name__ == "__main__":
    main()
