"""The one lock: Redis, unique token per holder, only the owner can release."""

import time

from common.transport.locks import PREFIX, task_lock


def test_second_caller_does_not_get_a_held_lock(redis_client) -> None:
    with task_lock("job", timeout=10, client=redis_client) as first:
        with task_lock("job", timeout=10, client=redis_client) as second:
            assert first and not second
        assert redis_client.exists(PREFIX + "job"), "the loser must not release the winner's lock"
    assert not redis_client.exists(PREFIX + "job"), "the owner releases on exit"


def test_a_run_that_outlives_its_lock_does_not_release_the_next_holders_lock(redis_client) -> None:
    with task_lock("slow", timeout=0.5, client=redis_client) as acquired:
        assert acquired
        time.sleep(0.8)  # the lock expires while this run still works...
        next_run = redis_client.lock(PREFIX + "slow", timeout=30)
        assert next_run.acquire(blocking=False)  # ...and the next run takes it
    # Leaving the slow run's block tried to release: the next run's lock must survive.
    assert next_run.owned()
    next_run.release()
