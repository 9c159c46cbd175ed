"""Who may predict with which model: the key check and model lookup of the prediction
routes, remembered for a few seconds.

A prediction of a small student costs well under a millisecond; two database queries
(the key, the model row) on every request would cost more than the prediction itself and
take a pooled connection each time. So each (key, model id) pair that was allowed is
remembered for `serving_lookup_ttl_seconds` (default 5 s; 0 turns this off).

What that means: a key revoked through another API process may keep
predicting for up to that long. A deleted model stops at once: through this process by
`forget_model`, through another one because its artifact folder is gone, which every
remembered hit checks (app/serving/access.py). Refusals are never remembered: a 401 or 404 is always fresh.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict

from app.core.model_format import StoredModel

# Entries kept at most; the oldest go first.
MAX_ENTRIES = 10_000


class LookupCache:
    def __init__(self, ttl_seconds: float, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], tuple[float, str, StoredModel]] = OrderedDict()
        # Lookups in flight, by `key`: asyncio futures of (owner, model) that concurrent
        # misses for the same pair wait on (app/serving/access.py). Event-loop only.
        self.pending: dict[tuple[str, str], asyncio.Future[tuple[str, StoredModel]]] = {}

    @staticmethod
    def key(authorization: str, model_id: str) -> tuple[str, str]:
        # The header's hash, so that keys do not sit in memory in the clear.
        return hashlib.sha256(authorization.encode()).hexdigest(), model_id

    def get(self, authorization: str, model_id: str) -> tuple[str, StoredModel] | None:
        if self.ttl <= 0:
            return None
        key = self.key(authorization, model_id)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires, owner, ref = entry
            if expires < time.monotonic():
                del self._entries[key]
                return None
            return owner, ref

    def put(self, authorization: str, model_id: str, owner: str, ref: StoredModel) -> None:
        if self.ttl <= 0:
            return
        key = self.key(authorization, model_id)
        with self._lock:
            self._entries[key] = (time.monotonic() + self.ttl, owner, ref)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def forget_model(self, model_id: str) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[1] == model_id]:
                del self._entries[key]
