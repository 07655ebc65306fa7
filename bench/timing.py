"""Timing shared by the benchmarks: the fastest of several calls, and the rate of a denoising
loop."""

from __future__ import annotations

import time


def best_time(fn, runs: int):
    """(result, seconds) of the fastest of ``runs`` calls of ``fn``."""
    best, result = float("inf"), None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


class StepClock:
    """Denoising-loop iterations per second from marks taken at each step's callback: CUDA events
    on a GPU (the host returns from a step before its kernels have run), the host clock on the
    CPU (where every kernel has run when the step returns)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def rate(self) -> float:
        """Iterations/s between the first and the last mark; NaN with fewer than two."""
        if len(self.marks) < 2:
            return float("nan")
        if self.cuda:
            seconds = self.marks[0].elapsed_time(self.marks[-1]) / 1000
        else:
            seconds = self.marks[-1] - self.marks[0]
        return (len(self.marks) - 1) / seconds
