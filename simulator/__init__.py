"""Device simulators and scenarios (``citysense simulate``).

Devices publish realistic telemetry, events and status over MQTT, each with its own
connection, ``seq`` counter and last will; scenarios inject the trouble alert rules look for.
River stations registered with a field protocol (HJ 212, SL 651) send their telemetry as
frames over TCP to a citysense gateway instead (``--protocol``; ``stationlink.py``).
The simulator depends only on ``devices`` and third-party libraries.

The CLI calls::

    add_arguments(parser)                       # on the "simulate" subparser
    try:
        config = config_from_args(args)
        registry = registry_for_run(config, lambda: load_registry(path))
        report = asyncio.run(run_simulation(config, registry, MqttTarget(host=..., port=...),
                                            {"hj212": GatewayTarget(...), "sl651": ...}))
    except SimulatorError as e:                 # bad options, no device for a scenario, no broker
        ...print e, exit 2
    print(report.to_json() if config.as_json else report.table())

Ctrl-C ends an open-ended run cleanly: ``run_simulation`` returns the report, interrupted.
"""

from simulator.arguments import add_arguments, config_from_args
from simulator.config import GatewayTarget, MqttTarget, SimulationConfig
from simulator.dryrun import dry_run
from simulator.errors import ConfigError, ScenarioError, SimulationError, SimulatorError
from simulator.report import SentReport
from simulator.runner import run_simulation
from simulator.scenarios import SCENARIOS
from simulator.synthetic import registry_for_run, synthetic_registry, write_registry

__all__ = [
    "SCENARIOS",
    "ConfigError",
    "GatewayTarget",
    "MqttTarget",
    "ScenarioError",
    "SentReport",
    "SimulationConfig",
    "SimulationError",
    "SimulatorError",
    "add_arguments",
    "config_from_args",
    "dry_run",
    "registry_for_run",
    "run_simulation",
    "synthetic_registry",
    "write_registry",
]
