"""The seed network's train step: the MobileNetV2 ImageNet classifier, per conv implementation.

The subject is the one supervised step of :mod:`fna_jax.runtime.steps` (``jit_train_step``:
forward, backward, SGD-with-momentum update (optax), BatchNorm in train mode with its running
averages updated, dropout; the state donated) on ``models.build('mobilenet_v2')``, with the mean
softmax cross-entropy on random labels.  One subject per conv implementation (see
:mod:`fna_jax.ops`) and, with ``with_torch=True``, torchvision's ``mobilenet_v2`` on the same batch
shape, with the ratio fna_jax / torch measured in the same run.

Figures (:mod:`fna_jax.bench.measure`): img/s and cpu ms/step; compile is the wall time of
``jit(...).lower(...).compile()`` (tracing and XLA compilation); peak RSS is sampled over each
subject's set-up (initialisation, compilation, warm-up steps) in this process
(:class:`fna_jax.bench.memory.MemorySampler`: a later subject can read low; for exact figures
time one subject per run, e.g. ``--impls=cpu`` without ``--torch``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import jax
import numpy as np
import optax

from fna_jax import models, ops
from fna_jax.bench import measure
from fna_jax.bench.memory import MemorySampler
from fna_jax.runtime import mesh as mesh_lib
from fna_jax.runtime import steps


def classification_loss(logits, batch):
  """Mean softmax cross-entropy against the integer ``batch['label']`` ``(B,)``."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()


def fna_jax_subject(impl: str, batch: int, size: int, num_classes: int, lr: float, warmup: int,
                    mesh) -> measure.Subject:
  """The fna_jax MobileNetV2 train step with conv ``impl``, compiled and warmed up."""
  model = models.build('mobilenet_v2', num_classes=num_classes, conv=ops.conv_module(impl))
  rng = np.random.default_rng(0)
  host = {'image': rng.standard_normal((batch, size, size, 3), dtype=np.float32),
          'label': rng.integers(0, num_classes, (batch,)).astype(np.int32)}
  data = mesh_lib.put_batch(host, mesh)
  tx = optax.sgd(lr, momentum=0.9)

  with MemorySampler() as mem:
    variables = jax.jit(lambda k: model.init(k, host['image'][:1], train=False))(
        jax.random.key(0))
    state = mesh_lib.put_replicated(steps.init_state(tx, variables, jax.random.key(1)), mesh)
    t0 = time.perf_counter()
    compiled = steps.jit_train_step(model, tx, classification_loss, mesh).lower(
        state, data).compile()
    compile_s = time.perf_counter() - t0
    box = [state]

    def one_step():
      box[0], metrics = compiled(box[0], data)
      return metrics['loss']

    measure.time_steps(one_step, warmup, 0)
    loss = float(one_step())  # one more warm-up step, checked for divergence
  if not np.isfinite(loss):
    raise FloatingPointError(f'fna_jax impl={impl}: loss is {loss} after the warm-up steps')
  return measure.Subject(f'fna_jax impl={impl}', one_step, batch, compile_s, mem)


def torch_subject(batch: int, size: int, num_classes: int, lr: float, warmup: int,
                  threads: int = 0) -> measure.Subject | None:
  """torchvision's mobilenet_v2 train step (CPU, ``threads`` threads; 0: one per core), warmed
  up; None (with a message) without torch."""
  try:
    import torch  # optional dependency
    import torchvision
  except ImportError as e:
    print(f'torch: skipped ({e})', flush=True)
    return None
  torch.set_num_threads(threads or os.cpu_count() or 1)
  torch.manual_seed(0)
  with MemorySampler() as mem:
    model = torchvision.models.mobilenet_v2(num_classes=num_classes)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, num_classes, (batch,))

    def one_step():
      opt.zero_grad(set_to_none=True)
      loss = loss_fn(model(x), labels)
      loss.backward()
      opt.step()
      return None

    measure.time_steps(one_step, warmup + 1, 0)
  return measure.Subject(f'torch ({torch.get_num_threads()} threads)', one_step, batch, None, mem)


def run(impls: Sequence[str], *, batch: int, size: int, num_classes: int, lr: float,
        plan: measure.TimingPlan, with_torch: bool = False, torch_threads: int = 0) -> None:
  """Times the train step per conv impl (and torchvision's with ``with_torch``); prints the
  figures."""
  mesh = mesh_lib.make_mesh()
  print(f'== seed: mobilenet_v2 train step, batch {batch}, {size}x{size}, {num_classes} classes, '
        f'backend {jax.default_backend()}, {os.cpu_count()} cores, {measure.load_line()}',
        flush=True)
  print(f'   {measure.memory_line()}', flush=True)
  subjects = [fna_jax_subject(impl, batch, size, num_classes, lr, plan.warmup, mesh)
              for impl in impls]
  if with_torch:
    t = torch_subject(batch, size, num_classes, lr, plan.warmup, torch_threads)
    if t is not None:
      subjects.append(t)
  print(measure.timing_line(plan), flush=True)
  stats = measure.time_interleaved(subjects, plan.rounds, plan.steps)
  rates = {}
  for s in subjects:
    measure.report(s, stats[s.name])
    rates[s.name] = stats[s.name].per_second(s.items_per_step)
  torch_name = next((s.name for s in subjects if s.name.startswith('torch')), None)
  for impl in impls:
    if torch_name:
      ratio = rates[f'fna_jax impl={impl}'] / rates[torch_name]
      print(f'ratio fna_jax impl={impl} / torch: {ratio:.2f} (img/s at median step times)',
            flush=True)
  if 'cpu' in impls and 'xla' in impls:
    print(f"ratio fna_jax impl=cpu / impl=xla: "
          f"{rates['fna_jax impl=cpu'] / rates['fna_jax impl=xla']:.2f}", flush=True)
  print(f'== seed done, {measure.load_line()}', flush=True)
