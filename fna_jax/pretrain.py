"""A short classification pretraining on embedded data: the demo's seed network.

The demo must start from a *trained* seed, as FNA++ starts from ImageNet weights, but it cannot
download one.  Without a converted torchvision checkpoint, the demo trains the seed architecture's
classifier on :class:`~fna_jax.data.demo.DemoClassification` for a few hundred steps and caches
the result (an orbax seed checkpoint, :mod:`fna_jax.seeds`) keyed by every setting that affects it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fna_jax import arch as arch_lib
from fna_jax import models, seeds
from fna_jax.data import demo, pipeline
from fna_jax.models.init import init_variables
from fna_jax.runtime import inputs
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.runtime import steps as steps_lib


def _cache_key(arch: arch_lib.Arch, cfg: dict) -> str:
  blob = json.dumps({'arch': arch.to_dict(), 'cfg': cfg}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pretrain_demo_seed(arch: arch_lib.Arch, cfg: dict, cache_dir: str, *, mesh=None,
                       log=print) -> tuple[arch_lib.Arch, dict]:
  """Trains (or loads from ``cache_dir``) the demo seed; returns ``(arch, variables)``.

  ``cfg``: ``steps``, ``batch_size``, ``image_size``, ``lr`` (peak AdamW learning rate),
  ``weight_decay``, ``num_examples`` (training images), ``num_val`` (held-out images the
  accuracy is reported on) and ``seed``.
  """
  path = os.path.join(os.path.abspath(cache_dir), f'demo_seed_{_cache_key(arch, cfg)}')
  if os.path.isdir(path):
    log(f'seed: cached demo pretraining {path}')
    return seeds.load_seed(path)
  mesh = mesh or mesh_lib.make_mesh()
  num_classes = demo.NUM_SHAPE_CLASSES
  model = models.build(arch, num_classes=num_classes)
  size = cfg['image_size']
  variables = init_variables(model, cfg['seed'], (1, size, size, 3), train=False)
  steps = cfg['steps']
  # Adam with warm-up and cosine decay: a few hundred steps from scratch need a forgiving
  # optimiser (SGD at a high learning rate diverged in the first epoch here).
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, cfg['lr'], max(steps // 10, 1), steps),
                   weight_decay=cfg['weight_decay'])
  loss_fn = lambda logits, batch: optax.softmax_cross_entropy_with_integer_labels(
      logits, batch['label']).mean()
  step = steps_lib.jit_train_step(model, tx, loss_fn, mesh)
  state = mesh_lib.put_replicated(
      steps_lib.init_state(tx, variables, jax.random.key(cfg['seed'])), mesh)
  source = demo.DemoClassification('train', cfg['num_examples'], size, seed=cfg['seed'])
  # uint8 batches (normalised in the step), put on the devices one step ahead.
  it = mesh_lib.prefetch_to_mesh(
      iter(pipeline.make_cls_pipeline(source, batch_size=cfg['batch_size'], seed=cfg['seed'])),
      mesh)
  t0 = time.perf_counter()
  log(f'seed: pretraining {arch.name or "the seed"} on embedded demo images for {steps} steps '
      f'(batch {cfg["batch_size"]}, {size}x{size}); cached in {path}')
  for i in range(1, steps + 1):
    state, metrics = step(state, next(it))
    if i % max(steps // 5, 1) == 0 or i == steps:
      log(f'seed: step {i}/{steps}  loss {float(metrics["loss"]):.3f}  '
          f'{time.perf_counter() - t0:.0f}s')
  variables = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  acc, n_val = validation_accuracy(model, variables, cfg, mesh)
  log(f'seed: validation accuracy {acc:.3f} on {n_val} held-out images '
      f'(chance {1 / num_classes:.2f})')
  if jax.process_index() == 0:
    seeds.save_seed(path, arch, variables, overwrite=True)
  return arch, jax.tree.map(np.asarray, variables)


def validation_accuracy(model, variables, cfg: dict, mesh) -> tuple[float, int]:
  """``(top-1 accuracy, images counted)`` of the seed on ``cfg['num_val']`` held-out images.

  One in-order pass of the classification pipeline (no flips, no shuffle; a last incomplete
  global batch is dropped; uint8 images normalised on the device), batch sharded over ``mesh``,
  correct predictions counted on device.
  """
  n, size = cfg['num_val'], cfg['image_size']
  source = demo.DemoClassification('val', n, size, seed=cfg['seed'])
  batch = max(32 - 32 % mesh.size, mesh.size)
  rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
  count_correct = jax.jit(
      lambda v, b: jnp.sum(jnp.argmax(model.apply(v, inputs.model_images(b), False), -1)
                           == b['label']),
      in_shardings=(rep, data), out_shardings=rep)
  it = pipeline.make_cls_pipeline(source, batch_size=batch // jax.process_count(), flip=False,
                                  shuffle=False, num_epochs=1)
  variables = jax.device_put(variables, rep)
  correct = seen = 0
  for host_batch in it:
    b = mesh_lib.put_batch(host_batch, mesh)
    correct += int(count_correct(variables, b))
    seen += b['label'].shape[0]
  return correct / max(seen, 1), seen
