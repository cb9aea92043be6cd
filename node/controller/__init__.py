"""The onboard controller, one file per responsibility (docs/architecture.md):

=================== ===================================================================
core.py             NodeController: the TaskGroup, board events, the per-frame pipeline
session.py          ControlSession: what one board session knows, rebuilt at link-up
rails.py            RailBook: which rails are off and why (outlives sessions)
shedding.py         LoadShedder: GPUs off when even minimum caps overdraw the budget
sensors.py          SensorFaults: the estimator's sensor flags as events, with hysteresis
fdir_binding.py     FdirBinding: FDIR monitors' actions carried out
commands.py         NodeCommands (what ground may ask) and GroundIntent (what it asked)
events.py           EventLog: events to ground, rate-limited where a board can flood
=================== ===================================================================
"""

from node.controller.core import NodeController
from node.controller.events import Publisher
from node.controller.sensors import SENSOR_CLEAR_S

__all__ = ["SENSOR_CLEAR_S", "NodeController", "Publisher"]
