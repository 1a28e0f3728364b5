"""One thread for host-side bookkeeping: planning, index maps, segment cuts.

That work is thousands of torch operations on small index tensors. Each one torch may run as a
parallel region that ends at a barrier waiting for every thread of its team; on a machine where
another process holds the cores, each barrier can cost a scheduler time slice (beside a busy
PyTorch process, cutting the segments of BERT-base -> 24L-1536 took 1.3 s instead of 0.1 s).
On one thread there is no barrier. The setting is process-wide, so it is restored on exit.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def one_thread():
    """Run the block with ``torch.set_num_threads(1)``; the previous count is restored after."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield threads
        return
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)  # also the default of threads that start later
