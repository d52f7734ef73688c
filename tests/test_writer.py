"""BackgroundWriter runs tasks in order and hands their first error back."""

from __future__ import annotations

import unittest

from agent.storage.writer import BackgroundWriter


class BackgroundWriterTest(unittest.TestCase):
    def test_tasks_run_in_submission_order_before_join_returns(self) -> None:
        # Given
        seen: list[int] = []
        writer = BackgroundWriter()
        # When
        for i in range(20):
            writer.submit(lambda i=i: seen.append(i))
        writer.join()
        # Then
        self.assertEqual(seen, list(range(20)))

    def test_the_first_error_is_raised_by_join_and_later_tasks_are_skipped(self) -> None:
        # Given
        seen: list[str] = []
        writer = BackgroundWriter()

        def fail() -> None:
            raise RuntimeError("disk full")

        # When
        writer.submit(fail)
        with self.assertRaises(RuntimeError) as caught:
            try:
                writer.submit(lambda: seen.append("later"))
            finally:
                writer.join()
        # Then
        self.assertEqual(str(caught.exception), "disk full")
        self.assertEqual(seen, [])
