"""``python -m lit_dqn tune``: real studies of short CartPole fits in real databases (SQLite, and
PostgreSQL where a server is given), read back with SQL."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason='tune needs pip install -e ".[tune]"')
sqlalchemy = pytest.importorskip("sqlalchemy")

import lightning as L  # noqa: E402
import torch  # noqa: E402

from lit_dqn import DQN, GymDataModule  # noqa: E402
from lit_dqn.checks import ConfigError  # noqa: E402
from lit_dqn.cli import DQNCLI, main  # noqa: E402
from lit_dqn.tuning import (  # noqa: E402
    UNSOLVED_ENV_STEPS,
    Parameter,
    SeedMedianPruner,
    check_search_space,
    env_steps_to_solve,
    load_search_space,
    open_storage,
    tune,
)

from .conftest import CONFIG, ROOT  # noqa: E402

# Each trial: 300 updates of CartPole, a greedy validation of 3 episodes every 100 (a few seconds).
FAST = [
    "--trainer.accelerator=cpu",
    "--trainer.max_steps=300",
    "--trainer.val_check_interval=100",
    "--data.eval_episodes=3",
    "--data.warmup_steps=100",
    "--data.batch_size=32",
]
SPACE = {
    "model.lr": {"float": [1.0e-4, 1.0e-2], "log": True},
    "model.gamma": {"float": [1.0e-3, 0.1], "log": True, "one_minus": True},
    "model.hidden_sizes": {"categorical": [[32], [64, 64]]},
}
# The env's own kwarg makes every greedy return -1 or 0 (0 per step, -1 at a fall): below any other.
SUTTON_BARTO = {"sutton_barto_reward": True}
POSTGRES_URL = os.environ.get("LIT_DQN_POSTGRES_URL")


def write_space(path: Path, space: dict) -> Path:
    path.write_text(json.dumps(space))  # JSON is YAML
    return path


def trial_rows(url: str, study_name: str) -> list[tuple[int, str]]:
    """(number, state) of every trial of the study, straight from the database's tables."""
    engine = sqlalchemy.create_engine(url)
    query = sqlalchemy.text(
        "SELECT t.number, t.state FROM trials t JOIN studies s ON s.study_id = t.study_id "
        "WHERE s.study_name = :name ORDER BY t.number"
    )
    with engine.connect() as connection:
        result = connection.execute(query, {"name": study_name})
        rows = [(number, str(state).split(".")[-1]) for number, state in result]
    engine.dispose()
    return rows


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three completed trials in an SQLite file, unpruned, as a user's first study."""
    root = tmp_path_factory.mktemp("tune")
    url = f"sqlite:///{root / 'study.db'}"
    code = tune(
        config=str(CONFIG),
        search=str(write_space(root / "space.yaml", SPACE)),
        n_trials=3,
        study_name="cartpole",
        storage=url,
        pruner="none",
        sampler_seed=0,
        fit=FAST,
    )
    return {"root": root, "url": url, "code": code, "out": root / "cartpole"}


def test_a_study_lives_in_its_database_and_keeps_a_run_per_trial(study: dict) -> None:
    assert study["code"] == 0
    assert trial_rows(study["url"], "cartpole") == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]
    loaded = optuna.load_study(study_name="cartpole", storage=study["url"])
    for trial in loaded.trials:
        # The study samples 1 - gamma; the trial's config holds gamma itself.
        assert set(trial.params) == {"model.lr", "1 - model.gamma", "model.hidden_sizes"}
        assert trial.user_attrs["config"]["model.gamma"] == 1.0 - trial.params["1 - model.gamma"]
        assert trial.user_attrs["config"]["model.hidden_sizes"] == json.loads(trial.params["model.hidden_sizes"])
        assert trial.value == max(score for _, _, score in trial.user_attrs["history_seed_0"])
        run = study["out"] / f"trial_{trial.number:04d}" / "lightning_logs" / "version_0"
        assert (run / "config.yaml").is_file() and list(run.glob("events.out.tfevents.*"))
        assert [p.name for p in (run / "checkpoints").iterdir()] == [p.name for p in run.glob("checkpoints/best-*")]
        assert not (run / "videos").exists()  # videos off in trials
    for name in ("best.yaml", "history.png", "importances.png"):
        assert (study["out"] / name).stat().st_size > 0


def test_best_yaml_reproduces_its_trial_bit_for_bit(study: dict, tmp_path: Path) -> None:
    best = optuna.load_study(study_name="cartpole", storage=study["url"]).best_trial
    trial_run = study["out"] / f"trial_{best.number:04d}" / "lightning_logs" / "version_0"
    (trial_ckpt,) = trial_run.glob("checkpoints/best-*.ckpt")
    DQNCLI(
        DQN,
        GymDataModule,
        args=["fit", "--config", str(study["out"] / "best.yaml"), f"--trainer.default_root_dir={tmp_path}"],
    )
    (ckpt,) = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("best-*.ckpt")
    assert ckpt.name == trial_ckpt.name  # the same update and the same validation return
    ours, theirs = (torch.load(p, weights_only=False) for p in (ckpt, trial_ckpt))
    assert ours["state_dict"].keys() == theirs["state_dict"].keys()
    for key, value in ours["state_dict"].items():
        assert torch.equal(value, theirs["state_dict"][key]), key
    moments = [ckpt["optimizer_states"][0]["state"][0]["exp_avg"] for ckpt in (ours, theirs)]
    assert torch.equal(*moments)


def test_a_trial_below_the_median_is_pruned_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = {"data.env_kwargs": {"categorical": [{}, SUTTON_BARTO]}}
    queued = optuna.create_study(study_name="prune", storage=url, direction="maximize")
    for kwargs in ({}, {}, SUTTON_BARTO):  # two ordinary trials, then one whose returns are at most 0
        queued.enqueue_trial({"data.env_kwargs": json.dumps(kwargs)})
    code = tune(
        config=str(CONFIG),
        search=str(write_space(tmp_path / "space.yaml", space)),
        n_trials=3,
        study_name="prune",
        storage=url,
        n_startup_trials=2,
        fit=FAST,
    )
    assert code == 0
    assert trial_rows(url, "prune") == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "PRUNED")]
    pruned = optuna.load_study(study_name="prune", storage=url).trials[2]
    assert pruned.user_attrs["config"] == {"data.env_kwargs": SUTTON_BARTO}
    # Pruned at its first validation (update 100 of 300), and its run stopped there.
    assert list(pruned.intermediate_values) == [100] and pruned.intermediate_values[100] <= 0
    assert [update for update, _, _ in pruned.user_attrs["history_seed_0"]] == [100]


def test_a_searched_max_steps_keeps_each_seeds_reports_apart(tmp_path: Path) -> None:
    """Seed 1's reports start past seed 0's last: offset by the searched max_steps (300), not the
    config's (100), which put seed 1's first two reports on seed 0's steps, where Optuna drops them."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = str(write_space(tmp_path / "space.yaml", {"trainer.max_steps": {"categorical": [300]}}))
    fit = [*FAST, "--trainer.max_steps=100"]
    assert tune(config=str(CONFIG), search=space, seeds=[0, 1], n_trials=1, storage=url, pruner="none", fit=fit) == 0
    (trial,) = optuna.load_study(study_name="cartpole", storage=url).trials
    reports = [
        (update + 300 * seed, score) for seed in (0, 1) for update, _, score in trial.user_attrs[f"history_seed_{seed}"]
    ]
    assert list(trial.intermediate_values) == [100, 200, 300, 400, 500, 600]
    assert [(step, value) for step, value in trial.intermediate_values.items()] == reports


def test_validations_before_the_warm_up_are_reported_but_never_prune(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = {"data.env_kwargs": {"categorical": [{}, SUTTON_BARTO]}}
    queued = optuna.create_study(study_name="warm", storage=url, direction="maximize")
    for kwargs in ({}, {}, SUTTON_BARTO):
        queued.enqueue_trial({"data.env_kwargs": json.dumps(kwargs)})
    common = {"config": str(CONFIG), "n_trials": 3, "study_name": "warm", "storage": url, "n_startup_trials": 2}
    assert tune(**common, search=str(write_space(tmp_path / "space.yaml", space)), n_warmup_steps=200, fit=FAST) == 0
    assert trial_rows(url, "warm") == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "PRUNED")]
    pruned = optuna.load_study(study_name="warm", storage=url).trials[2]
    # Below the median at update 100 already, but judged from update 200 on: stopped there.
    assert list(pruned.intermediate_values) == [100, 200]
    assert [update for update, _, _ in pruned.user_attrs["history_seed_0"]] == [100, 200]


def test_a_trial_fit_refuses_fails_in_one_line_and_the_study_goes_on(tmp_path: Path, caplog) -> None:
    """Each end of each range builds, but a drawn combination may not (a warm-up longer than the buffer)."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = {"data.warmup_steps": {"categorical": [100, 2000]}, "data.buffer_capacity": {"categorical": [1000, 5000]}}
    queued = optuna.create_study(study_name="refused", storage=url, direction="maximize")
    queued.enqueue_trial({"data.warmup_steps": 2000, "data.buffer_capacity": 1000})
    queued.enqueue_trial({"data.warmup_steps": 100, "data.buffer_capacity": 1000})
    common = {"config": str(CONFIG), "n_trials": 2, "study_name": "refused", "storage": url, "fit": FAST}
    assert tune(**common, search=str(write_space(tmp_path / "space.yaml", space))) == 0
    assert trial_rows(url, "refused") == [(0, "FAIL"), (1, "COMPLETE")]
    (failed,) = [record for record in caplog.records if "failed with parameters" in record.getMessage()]
    assert "data.warmup_steps=2000 is not allowed: it must be at most data.buffer_capacity=1000" in failed.getMessage()
    assert failed.exc_info is None and "Traceback" not in caplog.text


def test_env_steps_to_solve_counts_env_steps_to_the_first_validation_that_reaches_the_threshold(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", {"model.lr": {"float": [1.0e-4, 1.0e-3]}})
    for name, threshold in (("reached", -1e9), ("never", 1e9)):
        url = f"sqlite:///{tmp_path / name}.db"
        common = {"config": str(CONFIG), "search": str(space), "n_trials": 1, "storage": url, "fit": FAST}
        assert tune(**common, study_name=name, objective="env_steps_to_solve", threshold=threshold) == 0
        (trial,) = optuna.load_study(study_name=name, storage=url).trials
        (seed,) = trial.user_attrs["seeds"]
        first_validation_env_steps = trial.user_attrs["history_seed_0"][0][1]
        if name == "reached":  # 100 warm-up env steps, then one per update up to update 100
            assert trial.value == seed["solved_at"] == first_validation_env_steps == 200
        else:  # never solved: below any solved run, by how far its best return fell short
            assert seed["solved_at"] is None and trial.value == UNSOLVED_ENV_STEPS + (threshold - seed["best_return"])


def test_an_unsolved_seed_ranks_below_every_solved_one_whatever_its_env_step_budget() -> None:
    """At updates_per_step 0.125 a trial's max_steps is 8x the env steps of one at 1: counting an
    unsolved run by its own env steps ranked an unsolved trial of 1,000 env steps above one that
    solved at 1,900."""
    solved_late = env_steps_to_solve(1_900, best=85.4, threshold=30.0)
    unsolved_short = env_steps_to_solve(None, best=28.2, threshold=30.0)
    unsolved_far = env_steps_to_solve(None, best=9.4, threshold=30.0)
    assert solved_late < unsolved_short < unsolved_far  # minimised: solved first, then the nearer miss
    assert (solved_late + unsolved_short) / 2 < (unsolved_short + unsolved_far) / 2  # 1 of 2 seeds beats 0


def test_two_workers_run_the_trials_asked_for_on_one_sqlite_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = write_space(tmp_path / "space.yaml", SPACE)
    code = tune(config=str(CONFIG), search=str(space), n_trials=4, n_jobs=2, storage=url, study_name="two", fit=FAST)
    assert code == 0
    rows = trial_rows(url, "two")
    assert sorted(number for number, _ in rows) == [0, 1, 2, 3]  # four trials, no number twice
    assert {state for _, state in rows} == {"COMPLETE"}
    # A re-run continues the study with its own trials.
    assert tune(config=str(CONFIG), search=str(space), n_trials=1, storage=url, study_name="two", fit=FAST) == 0
    assert [number for number, _ in trial_rows(url, "two")] == [0, 1, 2, 3, 4]


def require_postgres() -> str:
    """The PostgreSQL server's URL; CI must have one, a laptop may not."""
    if POSTGRES_URL is None:
        if os.environ.get("CI"):
            pytest.fail("CI must give LIT_DQN_POSTGRES_URL (.ci/run starts a PostgreSQL server)")
        pytest.skip("no PostgreSQL server: set LIT_DQN_POSTGRES_URL=postgresql://USER:PASSWORD@HOST/DB")
    return POSTGRES_URL


def open_at_once(url: str, commands: int = 8) -> list[str]:
    """The errors of ``commands`` threads opening one storage at the same instant, as commands started
    together on an empty database do (the race is in creating the tables, threads meet it as processes do)."""
    barrier, errors = threading.Barrier(commands), []

    def command() -> None:
        barrier.wait()
        try:
            open_storage(url)
        except ConfigError as error:
            errors.append(str(error))

    threads = [threading.Thread(target=command) for _ in range(commands)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_commands_started_at_once_on_an_empty_sqlite_file_all_open_it(tmp_path: Path) -> None:
    for attempt in range(3):  # each a new empty file: the race is lost at random
        url = f"sqlite:///{tmp_path / f'study_{attempt}.db'}"
        assert open_at_once(url) == []
        optuna.create_study(study_name="after", storage=url)  # the tables are whole


def test_commands_started_at_once_on_an_empty_postgresql_database_all_open_it() -> None:
    """CI's first two commands met an empty database: all but one failed on Optuna's tables."""
    server = require_postgres()
    for _ in range(3):
        schema = f"empty_{uuid.uuid4().hex[:8]}"  # an empty database of its own: a new schema
        engine = sqlalchemy.create_engine(server)
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
        options = {"options": f"-csearch_path={schema}"}
        url = sqlalchemy.make_url(server).update_query_dict(options).render_as_string(hide_password=False)
        try:
            assert open_at_once(url) == []
            optuna.create_study(study_name="after", storage=url)
        finally:
            with engine.begin() as connection:
                connection.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
            engine.dispose()


def test_two_machines_share_one_postgresql_study(tmp_path: Path) -> None:
    """Two commands started at once on one PostgreSQL study, as two machines would be."""
    require_postgres()
    name = f"two-machines-{uuid.uuid4().hex[:8]}"
    space = write_space(tmp_path / "space.yaml", SPACE)
    command = [sys.executable, "-m", "lit_dqn", "tune", "--config", str(CONFIG), "--search", str(space)]
    command += ["--n_trials", "2", "--storage", POSTGRES_URL, "--study_name", name, "--seeds", "3", "4", "--", *FAST]
    machines = []
    for machine in ("a", "b"):
        (tmp_path / machine).mkdir()
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
        machines.append(subprocess.Popen(command, cwd=tmp_path / machine, **pipes))
    outputs = [machine.communicate(timeout=600)[0] for machine in machines]
    try:
        assert [machine.returncode for machine in machines] == [0, 0], outputs
        rows = trial_rows(POSTGRES_URL, name)
        assert sorted(number for number, _ in rows) == [0, 1, 2, 3]
        assert {state for _, state in rows} == {"COMPLETE"}
        study = optuna.load_study(study_name=name, storage=POSTGRES_URL)
        assert [[seed["seed"] for seed in trial.user_attrs["seeds"]] for trial in study.trials] == [[3, 4]] * 4
        # Each machine kept the runs of its own trials, under its own directory.
        runs = sorted(p.name for m in ("a", "b") for p in (tmp_path / m / "lightning_logs/tune" / name).glob("trial_*"))
        assert runs == ["trial_0000", "trial_0001", "trial_0002", "trial_0003"]
        # One run per seed in each trial's directory.
        for trial_dir in (tmp_path / m / "lightning_logs/tune" / name for m in ("a", "b")):
            for versions in (sorted(p.name for p in t.glob("lightning_logs/*")) for t in trial_dir.glob("trial_*")):
                assert versions == ["version_0", "version_1"]
    finally:
        optuna.delete_study(study_name=name, storage=POSTGRES_URL)


class CtrlCAsTheFitEnds(L.Callback):
    """Ctrl-C after the fit's last validation, while it winds up (``GracefulStop``, which comes after
    the config's callbacks, still holds the signal)."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_in_a_fit_that_then_returns_still_stops_the_study(tmp_path: Path) -> None:
    """A stop during training makes Lightning validate, whose first env step raises ``StopRequested``;
    one after the last validation lets the fit return. The user's Ctrl-C must stop the study all the
    same, not score the trial and start the next one."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    fit = [*FAST, f"--trainer.callbacks+={__name__}.CtrlCAsTheFitEnds"]
    space = str(write_space(tmp_path / "space.yaml", SPACE))
    code = tune(config=str(CONFIG), search=space, n_trials=2, study_name="last", storage=url, pruner="none", fit=fit)
    assert code == 128 + signal.SIGINT
    assert trial_rows(url, "last") == [(0, "FAIL")]


@pytest.mark.parametrize(
    ("fit", "message"),
    [
        (["--trainer.limit_val_batches=0"], "trainer.limit_val_batches=0 is not allowed for tune"),
        (["--trainer.max_steps=99"], "trainer.max_steps=99 is below trainer.val_check_interval=100"),
    ],
)
def test_a_fit_that_would_not_validate_is_one_line_before_any_trial(fit: list, message: str, tmp_path: Path) -> None:
    path = write_space(tmp_path / "space.yaml", SPACE)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        tune(config=str(CONFIG), search=str(path), storage=storage, n_trials=1, fit=[*FAST, *fit])
    assert not (tmp_path / "study.db").exists()  # no study was made


def test_ctrl_c_stops_the_study_and_records_the_running_trial_as_failed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = write_space(tmp_path / "space.yaml", SPACE)
    # Training, not validating, when the signal comes: the stop after an update must fail the trial too.
    long_fit = [*FAST, "--trainer.max_steps=1000000", "--trainer.val_check_interval=100000"]
    long_fit += ["--trainer.num_sanity_val_steps=0"]
    command = [sys.executable, "-m", "lit_dqn", "tune", "--config", str(CONFIG), "--search", str(space)]
    command += ["--n_trials", "5", "--storage", url, "--study_name", "stop", "--", *long_fit]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        run = tmp_path / "stop" / "trial_0000" / "lightning_logs" / "version_0"
        while not list(run.glob("events.out.tfevents.*")) and time.monotonic() < deadline:
            time.sleep(0.5)  # the logger's file appears as fit starts
        time.sleep(3)  # past the 100 warm-up env steps: training
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=120)[0]
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGINT, output
    assert trial_rows(url, "stop") == [(0, "FAIL")], output


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"model.lrr": {"float": [1e-4, 1e-2]}}, "model.lrr is not a key of fit (did you mean model.lr?)"),
        ({"model.lr": {"float": [1e-2, 1e-4]}}, "the range [0.01, 0.0001] is empty"),
        ({"model.lr": {"float": [0.0, 1e-2], "log": True}}, "a log range must be above 0"),
        ({"data.batch_size": {"categorical": []}}, "categorical must list at least one choice"),
        ({"data.batch_size": {"int": [1.5, 8]}}, "int takes [low, high], two integers"),
        ({"model.eps_end": {"float": [0.0, 1.5]}}, "model.eps_end=1.5 is refused"),
        ({"data.n_step": {"int": [0, 5]}}, "data.n_step=0 is refused"),
        ({"model.lr": {"uniform": [1e-4, 1e-2]}}, "must be one of {float: [low, high]}"),
        ({"seed_everything": {"int": [0, 9]}}, "seed_everything cannot be searched"),
        ({"data.seed": {"int": [0, 9]}}, "data.seed cannot be searched (the seeds are --seeds)"),
        (
            {"trainer.max_steps": {"int": [100, 200000]}},
            "trainer.max_steps=100 is refused: trainer.max_steps=100 is below",
        ),
    ],
)
def test_a_bad_search_space_is_one_line_before_any_trial(space: dict, message: str, tmp_path: Path, capsys) -> None:
    path = write_space(tmp_path / "space.yaml", space)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    code = main(["tune", "--config", str(CONFIG), "--search", str(path), "--storage", storage])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("lit_dqn tune: error: ") and message in err[0], err
    assert not (tmp_path / "study.db").exists()  # no study was made


@pytest.mark.parametrize(
    ("fit", "message"),
    [
        (["--data.lrr", "3"], "the config or the fit arguments after --: unrecognized arguments: --data.lrr 3"),
        (["--model.gamma", "2"], "the config or the fit arguments after --: model.gamma=2.0 is not allowed"),
    ],
)
def test_bad_fit_arguments_are_one_line_naming_them(fit: list[str], message: str, tmp_path: Path, capsys) -> None:
    """jsonargparse's usage text (78 lines) for an unknown key; a refused value blamed on the search space."""
    path = write_space(tmp_path / "space.yaml", SPACE)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    code = main(["tune", "--config", str(CONFIG), "--search", str(path), "--storage", storage, "--", *fit])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "study.db").exists()


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ("not a url", "storage='not a url' cannot be opened (ArgumentError"),
        ("nosuchdb://host/db", "storage='nosuchdb://host/db' cannot be opened (NoSuchModuleError"),
        ("postgresql://someone:secret@127.0.0.1:1/db", "storage='postgresql://someone:***@127.0.0.1:1/db' cannot be"),
        ("sqlite:///:memory:", "storage='sqlite:///:memory:' is a database in memory, a new empty one in each worker"),
    ],
)
def test_a_bad_storage_url_is_one_line(storage: str, message: str, tmp_path: Path, capsys) -> None:
    path = write_space(tmp_path / "space.yaml", SPACE)
    code = main(["tune", "--config", str(CONFIG), "--search", str(path), "--storage", storage])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert "secret" not in err[0]


def test_a_fixed_data_seed_with_several_seeds_is_refused(tmp_path: Path) -> None:
    """``data.seed`` seeds the envs, exploration and replay: with it fixed, ``--seeds`` would vary only
    the network's initial weights, and the mean over seeds would hide how little it varied."""
    space = str(write_space(tmp_path / "space.yaml", SPACE))
    with pytest.raises(ConfigError, match=r"data.seed=7 fixes .* so --seeds 0 1 would vary only the network's"):
        tune(
            config=str(CONFIG),
            search=space,
            seeds=[0, 1],
            output_dir=str(tmp_path / "out"),
            fit=[*FAST, "--data.seed=7"],
        )
    assert not (tmp_path / "out").exists()  # refused before anything was made


def test_a_negative_seed_is_refused_before_the_study(tmp_path: Path) -> None:
    space = str(write_space(tmp_path / "space.yaml", SPACE))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    with pytest.raises(ConfigError, match=r"seeds=-1 must be in \[0, 4294967295\]"):
        tune(config=str(CONFIG), search=space, seeds=[0, -1], storage=storage, output_dir=str(tmp_path / "out"))
    assert not (tmp_path / "study.db").exists() and not (tmp_path / "out").exists()


def test_one_output_folder_per_study(tmp_path: Path, capsys) -> None:
    """Two SQLite files side by side with the same study name defaulted to one folder, where the
    second's trial_0000 runs and best.yaml mixed with and replaced the first's. Each study now claims
    its folder, and a continued study goes on in its own."""
    space = str(write_space(tmp_path / "space.yaml", SPACE))
    fit = [*FAST, "--trainer.max_steps=100"]
    first = f"sqlite:///{tmp_path / 'a.db'}"
    assert tune(config=str(CONFIG), search=space, n_trials=1, storage=first, fit=fit) == 0
    assert (tmp_path / "cartpole" / "trial_0000").is_dir()  # beside a.db, named after the study
    second = f"sqlite:///{tmp_path / 'b.db'}"
    with pytest.raises(ConfigError, match=r"output_dir='.*cartpole' holds the runs of another study"):
        tune(config=str(CONFIG), search=space, n_trials=1, storage=second, fit=fit)
    assert not (tmp_path / "b.db").exists()  # refused before its database was made
    with pytest.raises(ConfigError, match=r"study 'cartpole' keeps its runs in .*cartpole: leave --output_dir out"):
        tune(config=str(CONFIG), search=space, n_trials=1, storage=first, output_dir=str(tmp_path / "new"), fit=fit)
    # moved with its database, a study continues in its own folder, not in the new default beside it
    (tmp_path / "moved").mkdir()
    shutil.move(tmp_path / "a.db", tmp_path / "moved" / "a.db")
    capsys.readouterr()
    moved = f"sqlite:///{tmp_path / 'moved' / 'a.db'}"
    assert tune(config=str(CONFIG), search=space, n_trials=1, storage=moved, fit=fit) == 0
    assert f"runs in {tmp_path / 'cartpole'}" in capsys.readouterr().err
    assert (tmp_path / "cartpole" / "trial_0001").is_dir() and not (tmp_path / "moved" / "cartpole").exists()
    # the folder a study keeps, no longer writable (here: moved under /proc), is one line, not a traceback
    optuna.load_study(study_name="cartpole", storage=moved).set_user_attr("output_dir", "/proc/lit_dqn_study")
    with pytest.raises(ConfigError, match=r"output_dir='/proc/lit_dqn_study' cannot be written"):
        tune(config=str(CONFIG), search=space, n_trials=1, storage=moved, fit=fit)


def test_a_root_dir_for_the_trials_is_refused_in_favour_of_output_dir(tmp_path: Path) -> None:
    space = str(write_space(tmp_path / "space.yaml", SPACE))
    with pytest.raises(ConfigError, match=r"trainer.default_root_dir after -- is not used.*give --output_dir"):
        tune(config=str(CONFIG), search=space, fit=[*FAST, f"--trainer.default_root_dir={tmp_path}"])


def test_an_output_dir_that_cannot_be_written_is_one_line_before_any_trial(tmp_path: Path, capsys) -> None:
    path = write_space(tmp_path / "space.yaml", SPACE)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["tune", "--config", str(CONFIG), "--search", str(path), "--storage", url, "--output_dir", "/proc/lit_dqn"]
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "output_dir='/proc/lit_dqn' cannot be written" in err[0], err
    assert not (tmp_path / "study.db").exists() or trial_rows(url, "cartpole") == []  # no trial failed for it


def test_a_study_made_for_another_experiment_is_refused(study: dict) -> None:
    other = write_space(study["root"] / "other.yaml", {"model.lr": {"float": [1e-4, 1e-3]}})
    with pytest.raises(ConfigError, match="study 'cartpole' was made with search="):
        tune(config=str(CONFIG), search=str(other), n_trials=1, study_name="cartpole", storage=study["url"], fit=FAST)


def test_a_study_follows_its_config_by_contents_not_by_path(tmp_path: Path, monkeypatch) -> None:
    """The same file written another way (./cp.yaml) continues the study; the file edited since is
    another experiment, refused before any trial runs."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(CONFIG, "cp.yaml")
    space = str(write_space(tmp_path / "space.yaml", {"model.lr": {"float": [1.0e-4, 1.0e-3]}}))
    common = {"search": space, "n_trials": 1, "study_name": "cp", "storage": f"sqlite:///{tmp_path / 'cp.db'}"}
    assert tune(config="cp.yaml", fit=FAST, **common) == 0
    assert tune(config="./cp.yaml", fit=FAST, **common) == 0
    Path("cp.yaml").write_text(Path("cp.yaml").read_text().replace("lr: 1.0e-3", "lr: 5.0e-2"))
    with pytest.raises(ConfigError, match=r"study 'cp' was made with config='cp.yaml' as it was then; 'cp.yaml' has"):
        tune(config="cp.yaml", fit=FAST, **common)
    assert trial_rows(common["storage"], "cp") == [(0, "COMPLETE"), (1, "COMPLETE")]


def test_a_sampler_seed_repeats_a_study_but_a_continued_study_draws_new_trials(tmp_path: Path) -> None:
    space = str(write_space(tmp_path / "space.yaml", {"model.lr": {"float": [1.0e-4, 1.0e-2], "log": True}}))
    common = {"config": str(CONFIG), "search": space, "n_trials": 1, "sampler_seed": 0, "fit": FAST}
    lrs = {}
    for name, runs in (("a", 2), ("b", 1)):
        url = f"sqlite:///{tmp_path / name}.db"
        for _ in range(runs):
            assert tune(**common, study_name=name, storage=url) == 0
        lrs[name] = [t.params["model.lr"] for t in optuna.load_study(study_name=name, storage=url).trials]
    assert lrs["a"][0] == lrs["b"][0]  # the same seed on a new study: the same first trial
    assert lrs["a"][1] != lrs["a"][0]  # the same command again on that study: not the same trial again


def test_a_searched_key_that_no_trial_would_use_is_refused(tmp_path: Path) -> None:
    """cartpole.yaml's ε decays exponentially: eps_fraction (the linear schedule's) changed nothing,
    and trials differing only in it had identical histories."""
    inert = write_space(tmp_path / "inert.yaml", {"model.eps_fraction": {"float": [0.01, 0.5]}})
    with pytest.raises(ConfigError, match=r"model.eps_fraction has no effect with the config's model.eps_schedule="):
        check_search_space(str(CONFIG), FAST, load_search_space(inert))
    both = write_space(tmp_path / "both.yaml", {**{"model.eps_schedule": {"categorical": ["linear", "exponential"]}},
                                                 "model.eps_fraction": {"float": [0.01, 0.5]}})  # fmt: skip
    check_search_space(str(CONFIG), FAST, load_search_space(both))  # some trials use it
    check_search_space(str(CONFIG), [*FAST, "--model.eps_schedule=linear"], load_search_space(inert))


def test_a_later_seed_is_pruned_on_its_own_reports_not_the_first_seeds() -> None:
    """Seeds of 1,000 updates: every completed trial scored 50 at seed 1's step 1,100. A running
    trial whose seed 0 reached 100 but whose seed 1 scores 10 is below that median: pruned. Optuna's
    MedianPruner alone took the trial's best over both seeds (100) and kept it."""
    study = optuna.create_study(direction="maximize")
    for value in (40.0, 50.0, 60.0):
        study.add_trial(optuna.trial.create_trial(value=value, intermediate_values={100: value, 1100: value}))
    running = study.ask()
    running.report(100.0, step=100)  # seed 0
    running.report(10.0, step=1100)  # seed 1
    frozen = study.get_trials(deepcopy=False)[-1]
    assert SeedMedianPruner(span=1000, n_startup_trials=0).prune(study, frozen)
    assert not optuna.pruners.MedianPruner(n_startup_trials=0).prune(study, frozen)  # the old judgement


def test_values_are_drawn_as_the_space_says() -> None:
    space = {
        "gamma": Parameter("model.gamma", "float", 1e-3, 0.1, log=True, one_minus=True),
        "sizes": Parameter("model.hidden_sizes", "categorical", choices=([64], [64, 64])),
        "n_step": Parameter("data.n_step", "int", 1, 7, step=2),
    }
    trial = optuna.trial.FixedTrial({"1 - model.gamma": 0.01, "model.hidden_sizes": "[64, 64]", "data.n_step": 5})
    assert space["gamma"].suggest(trial) == 0.99
    assert space["sizes"].suggest(trial) == [64, 64]
    assert space["n_step"].suggest(trial) == 5
    assert space["gamma"].ends() == [0.999, 0.9] and space["n_step"].ends() == [1, 7]


def test_the_shipped_search_space_fits_the_acrobot_config() -> None:
    parameters = load_search_space(ROOT / "configs" / "search" / "dqn.yaml")
    assert {p.key for p in parameters} >= {"model.gamma", "model.lr", "data.batch_size", "model.eps_fraction"}
    check_search_space(str(ROOT / "configs" / "acrobot.yaml"), [], parameters)  # every end of every range builds


def test_tune_help_names_its_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lit_dqn", "tune", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    for option in ("--config", "--search", "--n_trials", "--storage", "--objective", "--n_jobs", "--pruner"):
        assert option in result.stdout
