"""Triton kernels that carry out lemon's plans, and their launchers.

``lemon_kernels.executor.execute(plan, source, out=None)`` has the contract of
``lemon.reference.execute`` and produces the same bits. It runs on CUDA tensors, and on CPU
tensors under ``TRITON_INTERPRET=1`` (Triton's interpreter: how tests and machines without a
GPU exercise the real kernels). Importing this package imports Triton; ``import lemon`` never
does.
"""
