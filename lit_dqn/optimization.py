"""When a plain ``loss.backward()`` does exactly what Lightning's ``manual_backward`` would.

``manual_backward`` and ``clip_gradients`` route through the strategy and the precision plugin so that
DDP's gradient sync, loss scaling and the ``on_before_backward`` / ``on_after_backward`` hooks of every
callback all run. On one device in 32-bit precision, with no such hook overridden, all of that comes
down to ``loss.backward()`` and ``clip_grad_value_``, and the routing (a hook call per callback, twice)
costs about as much as the backward pass of a small Q-network. The learner takes the plain calls only
then, and Lightning's otherwise.
"""

import lightning as L
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden

_BACKWARD_HOOKS = ("on_before_backward", "on_after_backward")


def plain_backward_is_exact(trainer: L.Trainer) -> bool:
    """Whether ``loss.backward()`` and ``torch.nn.utils.clip_grad_value_`` do all that Lightning's
    ``manual_backward`` and ``clip_gradients`` would in this trainer: one device, plain 32-bit
    precision (no loss scaling, no precision conversion) and no backward hook or ``backward``
    override in the module or any callback."""
    module = trainer.lightning_module
    if type(trainer.strategy) is not SingleDeviceStrategy or type(trainer.precision_plugin) is not Precision:
        return False
    if any(is_overridden(hook, module, L.LightningModule) for hook in (*_BACKWARD_HOOKS, "backward")):
        return False
    callbacks = trainer.callbacks
    return not any(is_overridden(hook, callback, L.Callback) for callback in callbacks for hook in _BACKWARD_HOOKS)
