"""Records a streams consumer cannot use go to keel.dlq with the raw bytes and the reason."""
from __future__ import annotations

import time

from schemas.codec import Codec


def dead_letter(codec: Codec, message, reason: str, code: int, consumer: str) -> bytes:
    return codec.encode("dead_letter", {
        "source_topic": message.topic, "partition": message.partition,
        "offset": message.offset, "key": message.key, "value": message.value,
        "reason": reason[:2000], "error_code": int(code), "consumer": consumer,
        "ts": int(time.time() * 1000)})
