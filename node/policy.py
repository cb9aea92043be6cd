"""Policies: what a node does with its budget, chosen once (``node.policy``, ``--policy``).

A policy bundles the three decisions that differ between Umbra and what it is compared
with — the control law, when to checkpoint, whether to shed load — as objects.  Nothing
downstream asks for a policy's name: it holds the pieces and calls them.

- ``umbra``: :class:`~node.control.law.UmbraLaw`; checkpoints at Daly's interval from the
  measured cost and the observed fault rate, plus foresight (eclipse ahead, thermal loss of
  control, SAFE, ground); sheds the lowest-priority GPUs when even minimum caps overdraw
  the budget.
- ``baseline``: every GPU at its maximum cap (:class:`~node.control.law.BaselineLaw`); a
  fixed 30-minute interval, no foresight; never sheds.
- ``ipa``: the peer a Linux user would configure — the kernel's ``power_allocator`` governor
  on the die temperatures plus a plain battery rule (:class:`~node.control.peers.IpaLaw`);
  fixed-interval checkpoints; never sheds.
- ``step_wise``: the kernel's simpler ``step_wise`` governor with the same battery rule
  (:class:`~node.control.peers.StepWiseLaw`); fixed-interval checkpoints; never sheds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from node.control.law import BaselineLaw, ControlParams, Law, UmbraLaw
from node.control.peers import IpaLaw, StepWiseLaw
from node.errors import ConfigError
from node.jobs.manager import CheckpointPolicy, DalyWithForesight, FixedInterval, SimJobConfig


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    description: str
    make_law: Callable[[ControlParams], Law]
    make_checkpoints: Callable[[SimJobConfig], CheckpointPolicy]
    sheds_load: bool


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy(
            name="umbra",
            description="the controller: thermal and energy budgets, Daly checkpoints with foresight, load shedding",
            make_law=lambda params: UmbraLaw(params=params),
            make_checkpoints=lambda _config: DalyWithForesight(),
            sheds_load=True,
        ),
        Policy(
            name="baseline",
            description="every GPU at its maximum cap, fixed-interval checkpoints: what breaks without Umbra",
            make_law=lambda _params: BaselineLaw(),
            make_checkpoints=lambda config: FixedInterval(config.fixed_interval_s),
            sheds_load=False,
        ),
        Policy(
            name="ipa",
            description="the Linux power_allocator governor (IPA) with a battery rule: the peer a user would pick",
            make_law=lambda params: IpaLaw(params=params),
            make_checkpoints=lambda config: FixedInterval(config.fixed_interval_s),
            sheds_load=False,
        ),
        Policy(
            name="step_wise",
            description="the Linux step_wise governor with a battery rule",
            make_law=lambda params: StepWiseLaw(params=params),
            make_checkpoints=lambda config: FixedInterval(config.fixed_interval_s),
            sheds_load=False,
        ),
    )
}


def policy_named(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        raise ConfigError(f"node.policy = {name!r}: use {' or '.join(POLICIES)}", key="node.policy") from None
