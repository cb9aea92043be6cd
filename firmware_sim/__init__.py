"""A simulated dev board: the firmware's side of the serial link plus the plant it drives.

The board publishes a pseudo-terminal, so the node cannot tell it from a USB serial board
(``umbra-board --link PATH``).  The parts, from the inside out:

- :mod:`firmware_sim.kernels` — pure numba step kernel of the plant, with a NumPy reference;
- :mod:`firmware_sim.plant` — the ``Plant`` interface and ``FirstOrderPlant``;
- :mod:`firmware_sim.physics` — the orbital plant's step kernel (numba) and NumPy reference;
- :mod:`firmware_sim.spaceplant` — ``SpacePlant``: orbit, power, heat, GPUs, faults, truth
  (docs/board-physics.md);
- :mod:`firmware_sim.impair` — link impairments (bit errors, lost bytes, garbage);
- :mod:`firmware_sim.firmware` — the board firmware logic, sans-I/O;
- :mod:`firmware_sim.hil_port` — the HIL port (inject and read simulation parameters), sans-I/O;
- :mod:`firmware_sim.ptyport` — a pseudo-terminal published at a symlink;
- :mod:`firmware_sim.board` — the asyncio ``Board`` that wires them to a clock and ptys;
- :mod:`firmware_sim.cli` — the ``umbra-board`` command.

This package module stays light (no numba import) so ``umbra-board --help`` is quick.
Nothing may depend on it being run: an editable install made before this file existed
imports ``firmware_sim`` as a namespace package.
"""

from firmware_sim.config import __version__

__all__ = ["__version__"]
