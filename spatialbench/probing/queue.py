"""One queue of fits across a run's tasks and across every process working on the same output.

Each process walks the groups of cells not yet on disk, longest first, and fits those it claims
(claims.py); a task is summed up as soon as its cells are all on disk, whoever fitted them. A process
with nothing left to claim waits for the fits of the others, and takes over a claim that went stale (its
owner died), so no process waits at a barrier per task and a killed one's fits are done again.
"""

from __future__ import annotations

import time
from typing import Callable

from .cells import Cell
from .claims import Claims
from .task import Group, TaskProbing

POLL_SECONDS = 1.0  # how often a process with nothing to claim looks again


def work(groups: list[Group], claims: Claims, fit: Callable[[Group, list[Cell]], None],
         finish: Callable[[TaskProbing], None], fail: Callable[[TaskProbing, Exception], None],
         sleep: Callable[[float], None] = time.sleep, poll: float = POLL_SECONDS) -> None:
    """Fit every unfinished group of `groups`; `finish(task)` once all of a task's cells are on disk (in the
    tasks' order where several finish together); `fail(task, error)` when one of its fits raised."""
    queue = sorted(groups, key=lambda g: g.probing.cost(g.cells), reverse=True)
    open_tasks = list(dict.fromkeys(g.probing for g in groups))
    while open_tasks:
        for task in [t for t in open_tasks if not any(g.todo() for g in queue if g.probing is t)]:
            open_tasks.remove(task)
            finish(task)
        queue = [g for g in queue if g.probing in open_tasks and g.todo()]
        mine = next((g for g in queue if claims.take(g.claim)), None)
        if mine is None:
            if queue:  # every fit left is another process's: wait for it to finish, or for its claim to expire
                sleep(poll)
            continue
        try:
            todo = mine.todo()  # another process may have finished it between the look and the claim
            if todo:
                fit(mine, todo)
        except Exception as e:
            open_tasks.remove(mine.probing)
            fail(mine.probing, e)
        finally:
            claims.release(mine.claim)
