"""Exit code 0 after training: fairseq's prefetch threads stopped before interpreter finalisation.

fairseq prefetches batches in a daemon thread (``data.iterators.BackgroundConsumer``, one per
train or valid pass, ``--data-buffer-size`` > 0). A pass that stops early (``--max-update``,
``--max-valid-steps``) leaves it collating the next batches. If the interpreter finalises while
it is inside a torch op, CPython 3.11 ends it with ``pthread_exit`` when the op re-takes the GIL;
the unwinding meets pybind11's noexcept ``gil_scoped_release`` destructor and the process aborts
after "done training" ("terminate called without an active exception", exit -6).
``stop_prefetch_threads`` runs at exit, before finalisation: it tells each live consumer to stop
after the batch in hand and drains its queue until it has ended (``tests/test_exit.py`` checks
it; ``--data-buffer-size 0`` also avoids it, without prefetching).
"""

import queue
import threading
import time

from fairseq.data.iterators import BackgroundConsumer

PREFETCH_STOP_TIMEOUT_S = 60.0  # for all of them: each finishes one batch; a stuck one cannot hang the exit


def stop_prefetch_threads() -> None:
    """End every live fairseq prefetch thread, so none is inside a torch op at finalisation."""
    deadline = time.monotonic() + PREFETCH_STOP_TIMEOUT_S
    for thread in threading.enumerate():
        if not isinstance(thread, BackgroundConsumer):
            continue
        thread._max_len = 0  # its loop ends after the next put (fairseq 0.12's stop condition)
        while thread.is_alive() and time.monotonic() < deadline:
            try:
                thread._queue.get_nowait()  # room for that put and the end marker
            except queue.Empty:
                thread.join(0.01)
