"""The producer SDK: validate, pseudonymise, log, anchor, publish (see :mod:`pipelines.producer.sdk`)."""

from pipelines.producer.log import ProducerLog
from pipelines.producer.protocols import (
    Anchor,
    AnchorReceipt,
    MemoryAnchor,
    MemoryPublisher,
    OutgoingEvent,
    Publisher,
)
from pipelines.producer.sdk import AnchorUnavailable, Producer, ProducerReport, Pseudonymizer

__all__ = [
    "Anchor",
    "AnchorReceipt",
    "AnchorUnavailable",
    "MemoryAnchor",
    "MemoryPublisher",
    "OutgoingEvent",
    "Producer",
    "ProducerLog",
    "ProducerReport",
    "Pseudonymizer",
    "Publisher",
    "load_anchor",
]


def load_anchor(settings: object, name: str = "ledger") -> Anchor:
    """The anchor backend registered under ``pcc.anchors`` (the ledger registers ``ledger``)."""
    from importlib.metadata import entry_points

    from pipelines.errors import PccConfigError

    for ep in entry_points(group="pcc.anchors"):
        if ep.name == name:
            factory = ep.load()
            anchor: Anchor = factory(settings)
            return anchor
    raise PccConfigError(
        f"no anchor backend {name!r} is installed (entry point group pcc.anchors); install pcc[ledger]"
    )
