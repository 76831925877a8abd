"""Camera input: reader threads, reconnect policy and the bounded frame slots between them."""

from pipeline.streams.backoff import Backoff, ExponentialBackoff, NoBackoff
from pipeline.streams.reader import ReaderState, StreamReader, is_network_url
from pipeline.streams.slot import FrameSlot, Overflow

__all__ = [
    "Backoff",
    "ExponentialBackoff",
    "FrameSlot",
    "NoBackoff",
    "Overflow",
    "ReaderState",
    "StreamReader",
    "is_network_url",
]
