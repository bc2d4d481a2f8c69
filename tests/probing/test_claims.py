"""Claims (probing/claims.py): one owner per claim file, a live owner's claim kept, a dead one's taken over."""

import os
import subprocess
import sys

from spatialbench.probing.claims import Claims


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_claim_has_one_owner_until_released(tmp_path):
    path = tmp_path / "task" / "frozen.claim"
    with Claims() as a, Claims() as b:
        assert a.take(path)
        assert not b.take(path) and not a.take(path)  # not twice, even by its owner
        assert path.read_text() == a.owner
        a.release(path)
        assert not path.exists()
        assert b.take(path)
        a.release(path)  # releasing another's claim leaves it alone
        assert path.read_text() == b.owner
    assert not path.exists()  # closing releases what is still held


def test_another_nodes_claim_is_taken_only_after_its_heartbeat_stops_for_the_expiry(tmp_path):
    path = tmp_path / "frozen.claim"
    path.write_text("elsewhere pid:[1] 4242 0123abcd")  # another machine's: its pid says nothing here
    clock = Clock()
    claims = Claims(expiry=10, clock=clock)
    assert not claims.take(path)  # first seen now
    clock.now = 9.9
    assert not claims.take(path)
    writer = Claims(expiry=10)
    writer.held.add(path)
    writer.beat()  # its owner is alive after all: the mtime moves, the wait starts again
    clock.now = 15
    assert not claims.take(path)
    clock.now = 24.9
    assert not claims.take(path)
    clock.now = 25
    assert claims.take(path)
    assert path.read_text() == claims.owner
    assert not list(tmp_path.glob("*.stale"))
    claims.close()


def test_a_dead_process_on_this_host_loses_its_claim_at_once(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = tmp_path / "frozen.claim"
    with Claims(expiry=3600) as claims:
        path.write_text(f"{claims.host} {int(dead.stdout)} 0123abcd")
        assert claims.take(path)
        assert path.read_text() == claims.owner


def test_a_live_process_on_this_host_keeps_its_claim(tmp_path):
    path = tmp_path / "frozen.claim"
    clock = Clock()
    with Claims(expiry=3600) as owner, Claims(expiry=1, clock=clock) as other:
        path.write_text(f"{owner.host} {os.getpid()} 0123abcd")  # this test's own pid: alive
        assert not other.take(path)
        clock.now = 0.5
        assert not other.take(path)


def test_beat_forgets_a_claim_taken_over_while_this_process_stalled(tmp_path):
    path = tmp_path / "frozen.claim"
    with Claims() as a:
        assert a.take(path)
        path.unlink()  # another process judged it stale and moved it away
        a.beat()
        assert path not in a.held
