"""Shared by the method tests.

One torch thread for every test and fixture of any scope, set when this file is imported:
bit-exact comparisons (resume == straight run, DDP == single process) need the same reduction
order in every fixture, and on a shared 2-core machine torch's 2-thread pool stalled for
seconds under contention (measured: 20x slower steps).
"""

import torch

torch.set_num_threads(1)
