"""A local stand-in for LUCCS (ADA AS4 MSH, NTP portal), EO AS4 endpoints and an EO webhook receiver.

Each endpoint listens on its own port so an outage can be real ("connection refused"); a control API
switches modes at run time. Used by the demo (``make run``) and the end-to-end tests.
"""

from __future__ import annotations

from services.simulator.app import ADA_AS4, ALL, NTP, RECEIVER, Layout, Simulator, UnknownEndpoint, eo_name, layout
from services.simulator.behaviour import Kind, Mode
from services.simulator.receiver import Notice, NoticeLog
from services.simulator.server import EndpointError, EndpointSpec, SimulatedEndpoint

__all__ = [
    "ADA_AS4", "ALL", "NTP", "RECEIVER", "EndpointError", "EndpointSpec", "Kind", "Layout", "Mode", "Notice",
    "NoticeLog", "SimulatedEndpoint", "Simulator", "UnknownEndpoint", "eo_name", "layout",
]
