"""Target tasks: the :class:`~fna_jax.tasks.base.Task` interface and its implementations.

Each task lives in its own subpackage (``seg``: semantic segmentation) and knows no other task;
:mod:`fna_jax.build` maps config names to them.
"""
