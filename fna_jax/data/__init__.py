"""What every task's input shares (task-specific datasets and pipelines live under
:mod:`fna_jax.tasks`).

* :mod:`fna_jax.data.pipeline`: grain pipelines yielding numpy batches, deterministic and
  resumable, sharded per process; :func:`~fna_jax.data.pipeline.split_train_arch` (the search's
  held-out arch split, paper Sec. 4.1.1); the classification pipeline of seed pretraining.
* :mod:`fna_jax.data.transforms`: per-example numpy transforms (resize, random scale / crop /
  flip, ImageNet normalisation) and the ignore label of dense labels (255).
* :mod:`fna_jax.data.demo`: generated shape images (no download): the drawing shared by the demo
  datasets, and the classification set the demo seed is pretrained on.
"""
