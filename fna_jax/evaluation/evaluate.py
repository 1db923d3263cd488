"""Evaluating a segmentation network on a validation set: what ``scripts/evaluate.py`` runs.

``run_evaluation(config, model_dir, out_dir)`` loads a network saved by parameter adaptation
(``<adapt workdir>/model``), checks its variables against the architecture it claims (a mismatch
names the first differing parameter path), predicts every validation image (whole image, or
sliding windows of ``eval.crop_size`` overlapping by ``eval.overlap``) with the batch sharded over
all devices, accumulates one confusion matrix, and writes in ``out_dir``:

* ``eval.json``: mIoU, pixel accuracy, per-class IoU, mode, Params and MAdds of the network;
* ``iou.txt``: the per-class table;
* ``predictions/NNN.png``: the first ``eval.num_visualize`` images, each as input | ground truth |
  prediction, colour-coded.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from fna_jax import cost as cost_lib
from fna_jax.data import pipeline
from fna_jax.evaluation import checks, inference, metrics, visualize
from fna_jax.models.init import variable_shapes
from fna_jax.train import mesh as mesh_lib


def class_names_and_palette(data_name: str, num_classes: int):
  if data_name == 'cityscapes':
    return metrics.CITYSCAPES_CLASSES, visualize.CITYSCAPES_PALETTE
  if data_name == 'demo':
    return metrics.DEMO_CLASSES, visualize.demo_palette()
  return tuple(f'class{i}' for i in range(num_classes)), visualize.demo_palette()


def evaluate_network(model, variables, source, config, *, mesh=None, out_dir=None,
                     log=print) -> dict:
  """mIoU of ``model``/``variables`` on every example of ``source``; see the module docstring.

  Returns the dict written to ``eval.json`` (``miou``, ``pixel_accuracy``, ``iou`` per class,
  ``mode``, ``num_images``, ``params``, ``madds``, ``wall_time_s``).
  """
  t0 = time.perf_counter()
  mesh = mesh or mesh_lib.make_mesh()
  ec = config.eval
  if ec.mode not in ('whole', 'sliding'):
    raise ValueError(f"eval.mode must be 'whole' or 'sliding', got {ec.mode!r}")
  num_classes = config.data.num_classes
  names, palette = class_names_and_palette(config.data.name, num_classes)
  batch = -(-max(ec.batch_size, 1) // mesh.size) * mesh.size
  resize = tuple(ec.resize_to) if ec.get('resize_to') else None
  it = iter(pipeline.make_eval_pipeline(source, batch_size=batch // jax.process_count(),
                                        resize_to=resize, pad_remainder=True))
  rep, data = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
  variables = jax.device_put(variables, rep)
  forward = jax.jit(lambda v, x: model.apply(v, x, False), in_shardings=(rep, data),
                    out_shardings=data)
  count_cm = jax.jit(lambda labels, preds: metrics.confusion_matrix(labels, preds, num_classes),
                     in_shardings=(data, data), out_shardings=rep)

  cm = np.zeros((num_classes, num_classes), np.int64)
  shown, n_images = 0, 0
  for host_batch in it:
    b = mesh_lib.put_batch(host_batch, mesh)
    if ec.mode == 'whole':
      logits = inference.predict_whole(lambda x: forward(variables, x), b['image'])
    else:
      logits = inference.sliding_window_logits(lambda x: forward(variables, x), b['image'],
                                               num_classes, ec.crop_size, ec.overlap)
    preds = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    cm += np.asarray(count_cm(b['label'], preds), np.int64)
    valid = np.any(host_batch['label'] != metrics.IGNORE_LABEL, axis=(1, 2))
    n_images += int(valid.sum())
    # Pictures need the whole batch's predictions on this host: single-process runs only.
    if out_dir and shown < ec.num_visualize and jax.process_count() == 1:
      local_preds = np.asarray(preds)
      for k in np.flatnonzero(valid)[:ec.num_visualize - shown]:  # not eval padding
        visualize.save_triptych(os.path.join(out_dir, 'predictions', f'{shown:03d}.png'),
                                host_batch['image'][k], host_batch['label'][k], local_preds[k],
                                palette)
        shown += 1
  iou = metrics.iou_from_confusion(cm)
  h, w = config.cost_input_size
  params, madds = cost_lib.count(model, None, (1, h, w, 3))
  result = {
      'miou': metrics.mean_iou(cm), 'pixel_accuracy': metrics.pixel_accuracy(cm),
      'iou': {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
      'mode': ec.mode, 'num_images': n_images, 'params': int(params), 'madds': int(madds),
      'cost_input_size': [h, w], 'wall_time_s': round(time.perf_counter() - t0, 1)}
  table = metrics.format_iou_table(iou, names)
  log(table)
  log(f'mIoU {100 * result["miou"]:.2f}% over {n_images} images ({ec.mode}); network '
      f'{cost_lib.format_count(params, madds)} at {h}x{w}')
  if out_dir and jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'eval.json'), 'w') as f:
      json.dump(result, f, indent=2)
    with open(os.path.join(out_dir, 'iou.txt'), 'w') as f:
      f.write(table + '\n')
  return result


def run_evaluation(config, model_dir: str, out_dir: str | None = None, *, log=print) -> dict:
  """Loads the network saved in ``model_dir`` and evaluates it on the validation split."""
  from fna_jax.train import loop
  from fna_jax.train.adapt_loop import load_network
  from fna_jax.train.search_loop import make_sources
  loop.setup_runtime(config.get('distributed'), config.get('xla_cache_dir') or None)
  if os.path.isdir(os.path.join(model_dir, 'model')):
    model_dir = os.path.join(model_dir, 'model')
  model, variables, meta = load_network(model_dir, config)
  if meta['num_classes'] != config.data.num_classes:
    raise checks.ModelMismatchError(f'{model_dir} predicts {meta["num_classes"]} classes but the config\'s data '
                     f'({config.data.name}) has {config.data.num_classes}')
  checks.check_variables_match(variable_shapes(model, (1, 64, 64, 3), train=False), variables,
                               what=model_dir)
  _, val = make_sources(config.data)
  out_dir = out_dir or os.path.join(os.path.dirname(os.path.abspath(model_dir)), 'eval')
  log(f'evaluating {model_dir} on {len(val)} {config.data.name} validation images')
  return evaluate_network(model, variables, val, config, out_dir=out_dir, log=log)
