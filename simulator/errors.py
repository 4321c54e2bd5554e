"""What can go wrong for a user of the simulator: one base class for the CLI to catch."""

from __future__ import annotations


class SimulatorError(Exception):
    """A simulation that cannot go ahead; the message is meant for the operator."""


class ConfigError(SimulatorError, ValueError):
    """Options that do not make a valid run."""


class ScenarioError(SimulatorError, ValueError):
    """A scenario that cannot be run with the chosen devices."""


class SimulationError(SimulatorError, RuntimeError):
    """The run could not go ahead: the broker is unreachable or refused the devices."""
