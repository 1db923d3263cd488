"""Benchmarks: how fast and how big the steps of fna_jax are on the local backend.

The top floor of the package (it builds what it measures through :mod:`fna_jax.build` and the
steps of :mod:`fna_jax.runtime.steps` and :mod:`fna_jax.train.search`):

* :mod:`fna_jax.bench.measure`: timing several subjects interleaved in one run, the report line,
  the machine-load and allocator header lines, the huge-page ``malloc`` re-execution;
* :mod:`fna_jax.bench.memory`: resident-set sampling, peak RSS of a step in a fresh process, XLA's
  buffer assignment of a compiled step;
* :mod:`fna_jax.bench.compiles`: XLA executables built, counted from ``jax.monitoring`` events;
* :mod:`fna_jax.bench.seed` and :mod:`fna_jax.bench.search`: the subjects (``run()`` each).

``scripts/benchmark.py`` parses the flags and calls one ``run()`` per section.  A new section is
a module here with a ``run()`` that builds :class:`~fna_jax.bench.measure.Subject` s, times them
with :func:`~fna_jax.bench.measure.time_interleaved` and prints
:func:`~fna_jax.bench.measure.report` lines, plus one entry in the script's ``BENCHES``.
"""
