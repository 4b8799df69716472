"""When plain torch calls do exactly what Lightning's manual-optimization wrappers would.

``manual_backward``, ``clip_gradients`` and ``LightningOptimizer.step`` route through the strategy,
the precision plugin and the profiler so that DDP's gradient sync, loss scaling and the
``on_before_backward`` / ``on_after_backward`` / ``on_before_optimizer_step`` hooks of the module and
every callback all run. On one device in 32-bit precision, with no profiler and none of those hooks
overridden, all of that comes down to ``loss.backward()``, ``clip_grad_value_``, the torch
optimizer's ``step()`` and one more optimizer step counted (``trainer.global_step``). The routing,
a hook call per callback several times per update, costs about as much as the backward pass of a
small Q-network, so the learner takes the plain calls then, and Lightning's otherwise.
"""

import lightning as L
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden

_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


def plain_calls_are_exact(trainer: L.Trainer) -> bool:
    """Whether ``loss.backward()``, ``torch.nn.utils.clip_grad_value_`` and the torch optimizer's
    ``step()`` do all that Lightning's ``manual_backward``, ``clip_gradients`` and
    ``LightningOptimizer.step`` would in this trainer: one device, plain 32-bit precision (no loss
    scaling, no precision conversion), no profiler, and no override of the backward or
    before-optimizer-step hooks (or ``backward``) in the module or any callback."""
    module = trainer.lightning_module
    if type(trainer.strategy) is not SingleDeviceStrategy or type(trainer.precision_plugin) is not Precision:
        return False
    if type(trainer.profiler) is not PassThroughProfiler:
        return False
    if any(is_overridden(hook, module, L.LightningModule) for hook in (*_HOOKS, "backward")):
        return False
    return not any(is_overridden(hook, callback, L.Callback) for callback in trainer.callbacks for hook in _HOOKS)


class StepCounter:
    """Counts an optimizer step taken outside ``LightningOptimizer.step`` as that step would.

    In manual optimization ``trainer.global_step`` is the number of ``LightningOptimizer.step``
    calls, kept in the fit loop's optimizer-step progress (saved in checkpoints, so a resumed run
    counts on). A plain torch step advances the same tracker the same way: ready, then completed.
    """

    def __init__(self, trainer: L.Trainer) -> None:
        self._progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress

    def __call__(self) -> None:
        self._progress.increment_ready()
        self._progress.increment_completed()
