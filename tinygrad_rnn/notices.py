"""A note on stderr while Numba compiles kernels for the first run (cached afterwards),
so that a silent pause of several seconds is explained."""
import contextlib
import sys
import threading
import time

from numba.core import event

COMPILE_NOTE = ("note: compiling Numba kernels for the first run (some seconds); "
                "later runs load them from Numba's cache")


class _CompileWatch(event.Listener):
    """Says COMPILE_NOTE once, when compilation has taken ``threshold`` seconds in all."""

    def __init__(self, threshold, say):
        self.threshold, self._say = threshold, say
        self.depth, self.spent, self.started, self.said = 0, 0.0, None, False
        self.lock = threading.Lock()
        self.timer = None

    def on_start(self, ev):
        with self.lock:
            self.depth += 1
            if self.depth == 1:
                self.started = time.perf_counter()
                if self.timer is None and not self.said:  # say it while the compile is still running
                    self.timer = threading.Timer(max(self.threshold - self.spent, 0), self._tick)
                    self.timer.daemon = True
                    self.timer.start()

    def on_end(self, ev):
        with self.lock:
            self.depth -= 1
            if self.depth == 0:
                self.spent += time.perf_counter() - self.started
                if self.spent >= self.threshold:
                    self._once()
                elif self.timer is not None:
                    self.timer.cancel()
                    self.timer = None

    def _tick(self):
        with self.lock:
            self.timer = None
            if self.depth > 0:
                self._once()

    def _once(self):
        if not self.said:
            self.said = True
            self._say(COMPILE_NOTE)

    def close(self):
        with self.lock:
            if self.timer is not None:
                self.timer.cancel()


@contextlib.contextmanager
def compile_notice(threshold=1.5, say=None):
    """Within this block, print COMPILE_NOTE on stderr once Numba has spent ``threshold``
    seconds compiling (kernels loaded from the cache are not compiled: no note)."""
    watch = _CompileWatch(threshold, say or (lambda msg: print(msg, file=sys.stderr, flush=True)))
    try:
        with event.install_listener("numba:compile", watch):
            yield watch
    finally:
        watch.close()
