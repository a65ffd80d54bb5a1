"""The Redis result backend: Celery's, with each result stored in one atomic round trip.

Celery guards against a lost or duplicate delivery overwriting a finished task's SUCCESS by
reading the stored result before writing (`_store_result`: GET, then MULTI SET PUBLISH). That
is two round trips per state change, and a race: another worker can write between the read
and the write. Here one Lua script does the check, the write and the notification, so a
result costs one round trip and SUCCESS really is final.

Selected by `result_backend` in `common.celery_config` (`common.results:RedisBackend+redis://…`).
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.base import BackendStoreError
from celery.backends.redis import RedisBackend as CeleryRedisBackend
from kombu.utils.encoding import bytes_to_str
from kombu.utils.objects import cached_property

# KEYS[1] result key; ARGV[1] encoded meta (JSON), ARGV[2] expiry in seconds (0: none).
STORE_UNLESS_SUCCEEDED = """
local current = redis.call('GET', KEYS[1])
if current then
    local ok, meta = pcall(cjson.decode, current)
    if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
        return 0
    end
end
local expires = tonumber(ARGV[2])
if expires > 0 then
    redis.call('SETEX', KEYS[1], expires, ARGV[1])
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class RedisBackend(CeleryRedisBackend):
    @cached_property
    def _store_script(self) -> Any:
        return self.client.register_script(STORE_UNLESS_SUCCEEDED)

    def _store_result(  # type: ignore[override]
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend", state=state, task_id=task_id)
        expires = self.failure_expires if state == states.FAILURE else self.expires
        key = self.get_key_for_task(task_id)
        self.ensure(self._store_script, ([key], [value, int(expires or 0)]))
        return result


BACKEND = f"{__name__}:RedisBackend"
