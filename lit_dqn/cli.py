"""The ``python -m lit_dqn`` command line: Lightning's CLI over ``DQN`` and ``GymDataModule``."""

from lightning.pytorch.cli import LightningCLI

from lit_dqn.data import GymDataModule
from lit_dqn.module import DQN


class DQNCLI(LightningCLI):
    """LightningCLI whose model takes its input and output sizes from the datamodule's env."""

    def add_arguments_to_parser(self, parser) -> None:
        # The env decides the network's sizes, so a config never repeats them.
        parser.link_arguments("data.obs_dim", "model.obs_dim", apply_on="instantiate")
        parser.link_arguments("data.n_actions", "model.n_actions", apply_on="instantiate")


def main(args: list[str] | None = None) -> None:
    DQNCLI(DQN, GymDataModule, args=args)
