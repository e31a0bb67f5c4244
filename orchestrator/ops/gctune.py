"""The garbage collector of a process that holds many long-lived objects (the stream
follower: thousands of streams; the gateway: thousands of SSE connections).

Python's defaults collect the oldest generation often, and a full collection walks every
object the process holds: with a heap of connections that stalls the event loop for
hundreds of milliseconds, and every client waits.
"""

from __future__ import annotations

import gc

#: A follower of thousands of streams holds millions of objects: collections at the
#: default thresholds stalled its loop 75-200 ms (1,000 streams), at (10,000, 10, 10) up to
#: 0.76 s (python -m bench.streams --workers 5000: live lag p99 1.3 s -> 106 ms, same RSS).
#: The gateway with 1,000 SSE clients: full collections of 0.3-0.8 s at the defaults.
GC_THRESHOLDS = (100_000, 50, 10)


def tune_gc() -> None:
    """Freeze what was allocated so far (modules, settings: never garbage) out of every
    later collection, and collect less often. Called once, when the process is set up."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
