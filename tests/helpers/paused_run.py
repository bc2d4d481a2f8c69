"""`spatialbench ARGS...` that stops after its Nth finished probe fit until it is told to go on.

    python tests/helpers/paused_run.py N run --model ...

Once the Nth cell is on disk the run prints PAUSED on stdout and blocks reading a line from stdin: a
test then sends its signal at a point it chose (not whenever a race lets it), or writes a line to let the
run finish. A signal that ends the run ends it inside that wait, exactly as it would between two fits.
"""

import signal
import sys

PAUSED = "PAUSED"


def main() -> None:
    after, args = int(sys.argv[1]), sys.argv[2:]
    # Ctrl-C as a terminal delivers it, even when this test runs as a background job (which starts with SIGINT
    # ignored, and then Python installs no KeyboardInterrupt handler).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from spatialbench import cli
    from spatialbench.probing.cells import CellStore

    put = CellStore.put

    def put_then_maybe_wait(self, *a, **kw):
        put(self, *a, **kw)
        if self.fitted == after:
            print(PAUSED, flush=True)
            sys.stdin.readline()

    CellStore.put = put_then_maybe_wait
    sys.argv = ["spatialbench", *args]
    cli.main()


if __name__ == "__main__":
    main()
