"""The env spec: which Gymnasium env lit_dqn trains on and how every copy of it is made, checked once.

Training, validation, test, videos and ``record`` all build their envs from one ``EnvSpec`` (the
data module's ``env_id``, ``env_kwargs``, ``wrappers`` and ``image_layout``), and checkpoints carry
it, so an agent is always scored and filmed on the env it learned.
"""

import difflib
import functools
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, NotRequired, TypedDict

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import find_highest_version, parse_env_id
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers import FlattenObservation
from lightning.pytorch.utilities import rank_zero_warn

from lit_dqn.atari import atari_pipeline, is_atari
from lit_dqn.checks import ConfigError
from lit_dqn.networks import ImageLayout

# The optional extra (``pip install "lit-dqn[EXTRA]"``) that brings the simulator of an env family,
# keyed by a piece of the env's entry point (or its namespace) that names the family.
EXTRAS = {"box2d": "box2d", "ale_py": "atari", "ALE": "atari", "minatar": "minatar", "MinAtar": "minatar"}

# Where the channels of an env family's image observations are: MinAtar's games give (10, 10, C)
# grids; Atari's frames are stacked first, (4, 84, 84). Other image envs say so in data.image_layout.
FAMILY_LAYOUTS: dict[str, ImageLayout] = {"MinAtar/": "channels_last", "ALE/": "channels_first"}

# Steps after which an evaluation episode (validation, test, video) is cut, counted as truncated, where
# the env's own time limit is longer or absent: a greedy agent that never ends an episode (Breakout's
# that never presses FIRE) would otherwise play to Atari's 27,000-step limit, or forever.
EVAL_STEP_CAP = 10_000

# The data module's keys that make an EnvSpec.
ENV_SPEC_KEYS = ("env_id", "env_kwargs", "wrappers", "image_layout", "action_masks")


class WrapperSpec(TypedDict):
    """A Gymnasium wrapper around the env, built as class_path(env, **init_args)."""

    class_path: str  # e.g. gymnasium.wrappers.FlattenObservation, or mypkg.wrappers.MyWrapper
    # Keyword arguments after the env; a function (a Callable parameter) by its dotted path: numpy.sign
    init_args: NotRequired[dict[str, Any]]


def register_family(env_id: str) -> None:
    """Register the env families Gymnasium does not register on import: MinAtar (``MinAtar/...``) and
    the Atari games (``ALE/...``), whose packages register their envs when asked. Every process that
    makes the env calls this."""
    if env_id in gym.registry:
        return
    try:
        if env_id.startswith("MinAtar/"):
            import minatar.gym

            minatar.gym.register_envs()
        elif env_id.startswith("ALE/"):
            import ale_py

            gym.register_envs(ale_py)
    except ImportError:
        return  # EnvSpec.check then names the extra


def missing_extra(env_id: str) -> str | None:
    """The extra an env's family needs, from its registration, or ``None`` if no extra provides it."""
    spec = gym.registry.get(env_id)
    entry_point = str(spec.entry_point) if spec is not None else ""
    namespace = env_id.split("/")[0] if "/" in env_id else ""
    return next((extra for key, extra in EXTRAS.items() if key in entry_point or key == namespace), None)


class ZeroBasedActions(gym.ActionWrapper):
    """``Discrete(n, start=s)`` actions as ``0..n-1``, the Q-network's output indices: action ``a``
    reaches the env as ``a + s``."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.start = int(env.action_space.start)
        self.action_space = gym.spaces.Discrete(int(env.action_space.n))

    def action(self, action: Any) -> Any:
        return action + self.start


def adapt_spaces(env: gym.Env) -> gym.Env:
    """What a Q-network needs of any env it accepts: a Discrete observation one-hot encoded (Gymnasium's
    ``FlattenObservation``), Discrete actions counted from 0. An env that needs neither is returned as it is."""
    if isinstance(env.observation_space, gym.spaces.Discrete):
        env = FlattenObservation(env)
    if isinstance(env.action_space, gym.spaces.Discrete) and env.action_space.start != 0:
        env = ZeroBasedActions(env)
    return env


def _needs_adapting(observation_space: gym.Space, action_space: gym.Space) -> bool:
    discrete_actions = isinstance(action_space, gym.spaces.Discrete)
    return isinstance(observation_space, gym.spaces.Discrete) or (discrete_actions and action_space.start != 0)


class CheckedSpaces(NamedTuple):
    """An env's spaces as lit_dqn's networks and replay see them (after ``adapt_spaces``)."""

    observation_space: gym.spaces.Box  # flat (obs_dim,) or an image's three dimensions
    n_actions: int
    image_layout: ImageLayout | None  # None for a flat observation


@dataclass(frozen=True)
class ActionMasks:
    """Reads which actions are valid, where the env says: ``info["action_mask"]`` (Gymnasium's
    convention, Taxi's) or an ``action_masks()`` method (sb3-contrib's ``MaskablePPO`` convention).

    Masks are ``[N, n_actions]`` bool arrays, True where the action is valid.
    """

    source: Literal["info", "method"]
    n_actions: int

    def of_vector(self, envs: gym.vector.VectorEnv, infos: dict[str, Any]) -> np.ndarray:
        """The masks ``[N, n_actions]`` of a vector env's current observations, from the infos of the
        ``reset`` or ``step`` that returned them (a sub-env whose info has none: every action valid)."""
        if self.source == "method":
            masks = np.stack([np.asarray(m) for m in envs.call("action_masks")]).astype(bool)
        elif "action_mask" in infos:
            masks = np.asarray(infos["action_mask"]).astype(bool)
            masks[~np.asarray(infos.get("_action_mask", np.ones(len(masks), dtype=bool)))] = True
        else:
            masks = np.ones((envs.num_envs, self.n_actions), dtype=bool)
        return self._checked(masks.reshape(envs.num_envs, -1))

    def of_env(self, env: gym.Env, info: dict[str, Any]) -> np.ndarray:
        """The mask ``[1, n_actions]`` of one env's current observation."""
        if self.source == "method":
            mask = np.asarray(env.get_wrapper_attr("action_masks")()).astype(bool)
        else:
            mask = np.asarray(info.get("action_mask", np.ones(self.n_actions))).astype(bool)
        return self._checked(mask.reshape(1, -1))

    def _checked(self, masks: np.ndarray) -> np.ndarray:
        if masks.shape[1] != self.n_actions:
            raise ValueError(f"the env's action mask has {masks.shape[1]} entries, its action space {self.n_actions}")
        return masks


def _import_named(field: str, path: str, hint: str = "") -> Any:
    """``_import_class(path)`` for the config key ``field``: whatever the user's module raises is one line."""
    try:
        return _import_class(path)
    except Exception as error:
        message = str(error).splitlines()[0] if str(error) else ""
        raise ConfigError(f"{field}={path!r} cannot be imported: {type(error).__name__}: {message}{hint}") from None


def _import_class(path: str) -> Any:
    module_name, _, name = path.rpartition(".")
    if not module_name:
        raise ImportError(f"{path!r} is not a dotted path such as gymnasium.wrappers.FlattenObservation")
    return getattr(importlib.import_module(module_name), name)


@dataclass(frozen=True)
class EnvSpec:
    """Everything that decides which env an agent sees.

    Args:
        env_id: a registered Gymnasium id, or ``module:id`` (Gymnasium imports ``module`` first, which
            registers the env: how a user's own env is named without lit_dqn importing it).
        env_kwargs: keyword arguments for ``gym.make`` (the env's own options).
        wrappers: Gymnasium wrappers applied in order around each env, after Atari's preprocessing.
        image_layout: where an image observation's channels are; ``None`` takes the env family's
            (``FAMILY_LAYOUTS``), and an image env of no known family must say.
        action_masks: act, and bootstrap, among the actions the env says are valid (``ActionMasks``).
    """

    env_id: str
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    wrappers: Sequence[WrapperSpec] = ()
    image_layout: ImageLayout | None = None
    action_masks: bool = False

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> "EnvSpec":
        """The spec in a data module's hyperparameters (``GymDataModule.hparams``, or a checkpoint's
        ``datamodule_hyper_parameters``); keys a checkpoint of an older version lacks take their defaults."""
        return cls(
            env_id=hparams["env_id"],
            env_kwargs=dict(hparams.get("env_kwargs") or {}),
            wrappers=tuple(hparams.get("wrappers") or ()),
            image_layout=hparams.get("image_layout"),
            action_masks=bool(hparams.get("action_masks", False)),
        )

    @property
    def eval_step_cap(self) -> int:
        """Steps after which an evaluation episode is cut: the env's time limit (``max_episode_steps``
        of its registration or of ``env_kwargs``) where it is below ``EVAL_STEP_CAP``, else that."""
        limit = self.env_kwargs.get("max_episode_steps")
        if limit is None:
            registered = gym.registry.get(self.env_id.rpartition(":")[2])
            limit = registered.max_episode_steps if registered is not None else None
        return min(int(limit), EVAL_STEP_CAP) if limit else EVAL_STEP_CAP

    def _wrapper_factories(self) -> list[Callable[[gym.Env], gym.Env]]:
        """The user's wrappers as ``env -> wrapped env`` callables; an import error is one line."""
        factories = []
        for i, wrapper in enumerate(self.wrappers):
            cls = _import_named(f"data.wrappers[{i}].class_path", wrapper["class_path"])
            init_args = _functions_imported(i, cls, dict(wrapper.get("init_args") or {}))
            factories.append(functools.partial(_wrap, i, cls, init_args))
        return factories

    def _make_raw(self, *, training: bool, **make_kwargs: Any) -> gym.Env:
        """The env as the user's spec describes it: made, Atari's pipeline, then the user's wrappers."""
        register_family(self.env_id)
        kwargs = {**self.env_kwargs, **make_kwargs}
        if is_atari(self.env_id):
            env = atari_pipeline(gym.make(self.env_id, **{"frameskip": 1, **kwargs}), training=training)
        else:
            env = gym.make(self.env_id, **kwargs)
        for factory in self._wrapper_factories():
            env = factory(env)
        return env

    def make(self, *, training: bool = False, **make_kwargs: Any) -> gym.Env:
        """One env as lit_dqn sees it; ``make_kwargs`` (e.g. ``render_mode``) go to ``gym.make``.

        Atari games get the Nature DQN pipeline (``lit_dqn.atari``), whose lost lives end episodes
        and whose rewards are clipped in ``training`` only. Then come the spec's wrappers, then
        ``adapt_spaces``.
        """
        return adapt_spaces(self._make_raw(training=training, **make_kwargs))

    @functools.cached_property
    def _probe(self) -> "_Probe":
        """One env made from the spec, read once: its spaces before ``adapt_spaces`` and, with masks
        on, where its masks come from. The errors of making it become one line naming the key to fix."""
        try:
            env = self._make_raw(training=False)
        except ConfigError:
            raise
        except ModuleNotFoundError as error:
            raise ConfigError(f"data.env_id={self.env_id!r}: {str(error).splitlines()[0]}") from None
        except gym.error.Error as error:
            raise ConfigError(self._cannot_make(error)) from None
        except (TypeError, ValueError, AssertionError) as error:  # a bad kwarg, or the env's own check of one
            given = f"data.env_kwargs={dict(self.env_kwargs)!r}" if self.env_kwargs else f"data.env_id={self.env_id!r}"
            message = str(error).splitlines()[0] if str(error) else ""
            raise ConfigError(f"{given} cannot make the env: {type(error).__name__}: {message}") from None
        source, size = _mask_source(env) if self.action_masks else (None, 0)
        probe = _Probe(env.observation_space, env.action_space, source, size)
        env.close()
        return probe

    def masks(self) -> ActionMasks | None:
        """Where this env's action masks come from, if masks are on; an env that provides none is one line."""
        if not self.action_masks:
            return None
        _, action_space, source, size = self._probe
        if source is None:
            raise ConfigError(
                f"data.action_masks=true, but {self.env_id} provides no action mask: neither info['action_mask'] "
                "from reset and step (Gymnasium's convention) nor an action_masks() method (sb3-contrib's)"
            )
        if source == "reset":
            raise ConfigError(
                f"data.action_masks=true, but {self.env_id} gives info['action_mask'] from reset only: each step's "
                "info must carry the mask of the observation it returns (or give an action_masks() method)"
            )
        if size != action_space.n:
            raise ConfigError(
                f"data.action_masks=true, but {self.env_id}'s action mask has {size} entries "
                f"for its {action_space.n} actions"
            )
        return ActionMasks(source, int(action_space.n))

    def _cannot_make(self, error: gym.error.Error) -> str:
        extra = missing_extra(self.env_id)
        if extra is not None and isinstance(error, gym.error.DependencyNotInstalled | gym.error.NamespaceNotFound):
            return f'data.env_id={self.env_id!r} needs the {extra} extra: pip install "lit-dqn[{extra}]"'
        close = difflib.get_close_matches(self.env_id, list(gym.registry), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return f"data.env_id={self.env_id!r} cannot be made: {str(error).splitlines()[0]}{hint}"

    def _check_version(self) -> None:
        """An id without its version (``CartPole``): ``gym.make`` falls back to the latest with a warning,
        but ``gym.spec`` (evaluation's env, the registered time limit) does not, so it failed at the
        first validation. One line now, naming the version to give."""
        register_family(self.env_id)
        prefix, _, env_name = self.env_id.rpartition(":")
        try:
            namespace, name, version = parse_env_id(env_name)
        except gym.error.Error:  # not an id at all ("Cart Pole-v1"): making it says so, with close ids
            return
        latest = find_highest_version(namespace, name) if version is None and env_name not in gym.registry else None
        if latest is not None:
            versioned = f"{prefix}:{env_name}-v{latest}" if prefix else f"{env_name}-v{latest}"
            raise ConfigError(f"data.env_id={self.env_id!r} needs its version, e.g. {versioned!r} (the latest)")

    def check(self) -> CheckedSpaces:
        """Make one env and check DQN can learn it, failing early with one line that says what to change."""
        if ":" in self.env_id:  # Gymnasium imports the module itself, but shows only a missing module well
            module = self.env_id.split(":", 1)[0]
            try:
                importlib.import_module(module)
            except Exception as error:  # the user's module: whatever it raises, one line naming it
                raise ConfigError(
                    f"data.env_id={self.env_id!r}: importing its module {module!r} failed: "
                    f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                ) from None
        self._check_version()
        raw_observation_space, raw_action_space, *_ = self._probe
        if not isinstance(raw_action_space, gym.spaces.Discrete):
            raise ConfigError(
                f"data.env_id={self.env_id!r} has a {type(raw_action_space).__name__} action space; "
                "DQN needs Discrete actions (e.g. CartPole-v1, Acrobot-v1, MountainCar-v0, LunarLander-v3)"
            )
        observation_space = (
            gym.spaces.flatten_space(raw_observation_space)
            if isinstance(raw_observation_space, gym.spaces.Discrete)
            else raw_observation_space
        )
        shape = getattr(observation_space, "shape", None)
        flat = isinstance(observation_space, gym.spaces.Box) and len(shape) == 1
        image = (
            isinstance(observation_space, gym.spaces.Box)
            and len(shape) == 3
            and observation_space.dtype in (np.uint8, np.bool_)
        )
        frames = isinstance(observation_space, gym.spaces.Box) and len(shape) == 2
        if frames and observation_space.dtype in (np.uint8, np.bool_):  # grayscale: give it a channel axis
            stack = "{class_path: gymnasium.wrappers.FrameStackObservation, init_args: {stack_size: 1}}"
            raise ConfigError(
                f"data.env_id={self.env_id!r} gives 2-D frames {tuple(shape)}; the CNN takes an image with a channel "
                f"axis: data.wrappers: [{stack}] (last in the list; stack_size 4 stacks the last 4 frames) and "
                "data.image_layout: channels_first"
            )
        if not (flat or image):
            flatten = "{class_path: gymnasium.wrappers.FlattenObservation}"
            raise ConfigError(
                f"data.env_id={self.env_id!r} has observation space {raw_observation_space}; the Q-network takes "
                "a flat Box (obs_dim,) or an image Box of uint8 or bool: add the wrapper that flattens it, "
                f"data.wrappers: [{flatten}] (last in the list)"
            )
        if flat and self.image_layout is not None:
            raise ConfigError(
                f"data.image_layout={self.image_layout!r} is for image observations; {self.env_id}'s are flat "
                f"{tuple(shape)}: leave it null"
            )
        layout = self._layout(shape) if image else None
        if layout is not None:
            height, width = shape[:2] if layout == "channels_last" else shape[1:]
            if min(height, width) < 3:
                raise ConfigError(
                    f"data.env_id={self.env_id!r} gives images of {height}x{width} pixels ({layout}, shape "
                    f"{tuple(shape)}); the CNN needs at least 3x3: check data.image_layout, or flatten them "
                    "with data.wrappers: [{class_path: gymnasium.wrappers.FlattenObservation}]"
                )
        checked = CheckedSpaces(observation_space, int(raw_action_space.n), layout)
        self.masks()  # masks asked for and none provided: one line now
        return checked

    def _layout(self, shape: tuple[int, ...]) -> ImageLayout:
        if self.image_layout is not None:
            return self.image_layout
        family = next((layout for prefix, layout in FAMILY_LAYOUTS.items() if self.env_id.startswith(prefix)), None)
        if family is None:
            raise ConfigError(
                f"data.env_id={self.env_id!r} gives images of shape {tuple(shape)}, and its channel axis cannot "
                "be told from the shape: set data.image_layout to channels_first (C, H, W) or channels_last (H, W, C)"
            )
        return family

    def make_vec(
        self, num_envs: int, *, training: bool = False, vectorization_mode: str | None = None
    ) -> gym.vector.VectorEnv:
        """``num_envs`` copies of ``make`` in a vector env that resets a sub-env on its next step
        (``AutoresetMode.NEXT_STEP``, what ``EnvRunner`` expects). ``vectorization_mode=None`` takes
        the env's own batched implementation where it has one (CartPole's) and the spec needs no
        wrapper, else steps copies in this process."""
        wrappers = self._wrapper_factories()
        if _needs_adapting(*self._probe[:2]):
            wrappers.append(adapt_spaces)
        own_loop = is_atari(self.env_id) or bool(wrappers)
        automatic = vectorization_mode is None
        if automatic:
            batched = gym.spec(self.env_id.rpartition(":")[2]).vector_entry_point is not None  # "module:" imported
            vectorization_mode = "vector_entry_point" if batched and not own_loop else "sync"
        if vectorization_mode == "vector_entry_point" and own_loop:
            why = "its preprocessing comes from Gymnasium's wrappers" if is_atari(self.env_id) else "it has wrappers"
            raise ConfigError(
                f"data.vectorization_mode='vector_entry_point' is not available for {self.env_id}: {why}; "
                "use 'sync' or 'async'"
            )
        if is_atari(self.env_id):
            factory = functools.partial(self.make, training=training)
            vector = gym.vector.AsyncVectorEnv if vectorization_mode == "async" else gym.vector.SyncVectorEnv
            envs = vector([factory] * num_envs)
        else:
            envs = gym.make_vec(
                self.env_id,
                num_envs=num_envs,
                vectorization_mode=vectorization_mode,
                wrappers=wrappers or None,
                **self.env_kwargs,
            )
        mode = envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if mode != AutoresetMode.NEXT_STEP and automatic:  # its batched implementation will not do: copies will
            envs.close()
            return self.make_vec(num_envs, training=training, vectorization_mode="sync")
        if mode != AutoresetMode.NEXT_STEP:
            envs.close()
            mode = getattr(mode, "value", mode)
            raise ConfigError(
                f"data.env_id={self.env_id!r} makes vector envs that autoreset in mode {mode!r}; "
                f"lit_dqn's replay reads Gymnasium's default, {AutoresetMode.NEXT_STEP.value!r} (a finished sub-env "
                "resets on its next step): use data.vectorization_mode sync or async"
            )
        return envs

    def make_eval_vec(self, num_envs: int) -> gym.vector.VectorEnv:
        """``num_envs`` copies of ``make`` stepped in this process, for evaluation episodes.

        A reset with seed ``s`` seeds copy ``i`` with ``s + i``, so an evaluation episode's start
        state depends on its seed alone: episode ``k`` of ``evaluate(..., seed)`` is the episode
        ``make().reset(seed=seed + k)`` starts, whatever ``data.eval_episodes`` or the number of DDP
        ranks, and ``record`` replays it. A batched implementation (CartPole's ``vector_entry_point``)
        draws every start state from one RNG, so evaluation uses it only for an env that has nothing
        else, and says what that costs.
        """
        if gym.spec(self.env_id.rpartition(":")[2]).entry_point is None:
            rank_zero_warn(
                f"{self.env_id} has only a batched vector env: its evaluation episodes' start states depend on "
                "data.eval_episodes and on the number of processes"
            )
            return self.make_vec(num_envs)
        return self.make_vec(num_envs, vectorization_mode="sync")


class _Probe(NamedTuple):
    observation_space: gym.Space
    action_space: gym.Space
    mask_source: Literal["info", "method", "reset"] | None
    mask_size: int  # entries of the first mask read (0 if none)


def _mask_source(env: gym.Env) -> tuple[Literal["info", "method", "reset"] | None, int]:
    """Which convention an env follows for action masks, and its mask's length, read from its first
    reset and, for masks in the info, its first step: ``reset`` where only the reset's info has one
    (every later step would then count every action valid)."""
    _, info = env.reset(seed=0)
    method = env.has_wrapper_attr("action_masks")
    if "action_mask" in info:
        mask = np.asarray(info["action_mask"]).astype(bool).ravel()
        if not isinstance(env.action_space, gym.spaces.Discrete):
            return "info", mask.size  # EnvSpec.check refuses the action space in one line
        valid = np.flatnonzero(mask)
        _, _, terminated, truncated, step_info = env.step(
            int(env.action_space.start) + int(valid[0] if valid.size else 0)
        )
        ended = terminated or truncated  # an episode's last info may leave the mask out: nothing acts on it
        if ended or "action_mask" in step_info:
            return "info", mask.size
        if not method:
            return "reset", mask.size
    if method:
        return "method", int(np.asarray(env.get_wrapper_attr("action_masks")()).size)
    return None, 0


def _functions_imported(index: int, cls: type, init_args: dict[str, Any]) -> dict[str, Any]:
    """``init_args`` with each string given for a parameter annotated ``Callable`` imported by its dotted
    path (``func: numpy.sign`` for ``TransformReward``): YAML and the command line have no functions,
    and the string itself failed at the first step ("'str' object is not callable")."""
    parameters = inspect.signature(cls.__init__).parameters
    imported = dict(init_args)
    for key, value in init_args.items():
        parameter = parameters.get(key)
        if parameter is None or not isinstance(value, str) or "Callable" not in str(parameter.annotation):
            continue
        field = f"data.wrappers[{index}].init_args.{key}"
        function = _import_named(field, value, "; give a function's dotted path, e.g. numpy.sign")
        if not callable(function):
            raise ConfigError(f"{field}={value!r} is not a function")
        imported[key] = function
    return imported


def _wrap(index: int, cls: type, init_args: dict[str, Any], env: gym.Env) -> gym.Env:
    """``cls(env, **init_args)``; bad init args are one line naming the wrapper."""
    try:
        return cls(env, **init_args)
    except (TypeError, ValueError, AssertionError, gym.error.Error) as error:
        name = f"{cls.__module__}.{cls.__qualname__}"
        message = str(error).splitlines()[0] if str(error) else ""
        raise ConfigError(
            f"data.wrappers[{index}] ({name}) cannot wrap the env: {type(error).__name__}: {message}"
        ) from None
