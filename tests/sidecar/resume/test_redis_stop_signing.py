"""Stop messages on the shared Redis are signed with ``[resume] binding_key``.

Found by the round-3 review: Redis is a trust boundary (anyone who can publish on it could stop
every generation of every replica). A stop message is ``<log key>.<HMAC-SHA256>``; a listener
drops (and counts) what it cannot verify.
"""

from __future__ import annotations

import asyncio

from streamhop.sidecar.resume.redis_store import (
    STOP_CHANNEL,
    RedisStore,
    sign_stop,
    verify_stop,
)
from tests.support import wait_for_async

KEY = b"shared-binding-key"


def test_a_signed_stop_verifies_and_a_forged_one_does_not() -> None:
    message = sign_stop(KEY, "abc123")
    assert verify_stop(KEY, message) == "abc123"
    assert verify_stop(b"another-key", message) is None
    assert verify_stop(KEY, "abc123") is None  # unsigned
    assert verify_stop(KEY, "abc123." + "0" * 64) is None
    assert verify_stop(KEY, message.replace("abc123", "abc124")) is None


def test_replicas_act_on_signed_stops_only(shared_redis: str) -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        errors: list[str] = []
        stopped: list[str] = []
        listener = RedisStore(shared_redis, 60, 1 << 20, errors.append, signing_key=KEY)
        sender = RedisStore(shared_redis, 60, 1 << 20, signing_key=KEY)
        try:
            listener.listen_stops(stopped.append)

            async def subscribed() -> bool:
                counts = await sender.client.pubsub_numsub(STOP_CHANNEL)
                return bool(counts and counts[0][1] >= 1)

            await wait_for_async(subscribed, 10, "the listener to subscribe")
            await sender.client.publish(STOP_CHANNEL, "forged-key")  # what any Redis client can do
            await sender.publish_stop("real-key")

            async def got_one() -> bool:
                return bool(stopped)

            await wait_for_async(got_one, 10, "the signed stop to arrive")
        finally:
            await listener.aclose()
            await sender.aclose()
        return stopped, errors

    stopped, errors = asyncio.run(scenario())
    assert stopped == ["real-key"]
    assert errors == ["stop_forged"]
