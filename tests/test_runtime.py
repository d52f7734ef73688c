"""agent.runtime: settling a warmed process's heap out of later garbage collections."""

from __future__ import annotations

import gc
import unittest

from agent.runtime import settle_heap


class SettleHeapTest(unittest.TestCase):
    def test_objects_alive_now_are_frozen_and_later_garbage_is_still_collected(self) -> None:
        self.addCleanup(gc.unfreeze)
        kept = [object() for _ in range(10)]
        frozen = settle_heap()
        self.assertEqual(frozen, gc.get_freeze_count())
        self.assertGreater(frozen, len(kept))

        class Node:
            pass

        cycle = Node()
        cycle.me = cycle  # a cycle made after the freeze: a collection still finds it
        del cycle
        self.assertGreaterEqual(gc.collect(), 1)
