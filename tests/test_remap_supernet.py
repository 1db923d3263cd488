"""Seed -> supernet -> derived architecture remapping."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fna_jax import arch as arch_lib
from fna_jax import spaces
from fna_jax.models import Backbone
from fna_jax.models import supernet as sn
from fna_jax.models.init import init_variables
from fna_jax.remap import remap_block, seed_to_supernet, supernet_to_arch


def _randomise_stats(variables, seed=0):
  rng = np.random.default_rng(seed)
  variables['batch_stats'] = jax.tree_util.tree_map_with_path(
      lambda p, a: (0.2 * rng.standard_normal(a.shape) if p[-1].key == 'mean'
                    else rng.uniform(0.5, 2.0, a.shape)).astype(np.float32),
      variables['batch_stats'])
  return variables


@pytest.fixture(scope='module')
def seeded():
  seed_arch = arch_lib.mobilenet_v2().with_output_stride(16).replace(last_channels=None)
  seed = _randomise_stats(init_variables(Backbone(seed_arch), 0, (1, 32, 32, 3)))
  space = spaces.mobilenet_v2_space('seg')
  sup = seed_to_supernet(seed, seed_arch, space)
  return seed_arch, seed, space, sup


def test_every_candidate_comes_from_the_same_seed_layer(seeded):
  seed_arch, seed, space, sup = seeded
  # stage 3 has 4 seed layers; supernet layer 5 takes seed layer 3 (Eq. 1), for every op.
  for op in space.candidates(3, 5):
    if op == 'skip':
      assert op not in sup['params']['stage3']['layer5']
      continue
    want = remap_block({c: seed[c]['stage3']['layer3'] for c in seed}, 'k3_e6', op, 'mbconv',
                       (64, 64, 1), (64, 64, 1))
    got = {c: sup[c]['stage3']['layer5'][op] for c in sup}
    chex.assert_trees_all_equal(got, want)


def test_shapes_match_the_supernet(seeded):
  _, _, space, sup = seeded
  shapes = init_variables(sn.Supernet(space), 0, (1, 32, 32, 3))
  assert jax.tree.structure(shapes) == jax.tree.structure(sup)
  chex.assert_trees_all_equal_shapes(shapes, sup)


def test_seed_path_through_supernet_is_the_seed(seeded):
  """Choosing the seed's own ops (and skip beyond its depth) reproduces the seed in eval mode."""
  seed_arch, seed, space, sup = seeded
  choices = []
  for i, j in space.searched_layers():
    choices.append('k3_e6' if j < len(seed_arch.stages[i].ops) else 'skip')
  idx = [space.candidates(i, j).index(c) for (i, j), c in zip(space.searched_layers(), choices)]
  x = jax.random.normal(jax.random.key(0), (2, 48, 48, 3))
  want = Backbone(seed_arch).apply(seed, x, False)['out']
  got = sn.Supernet(space).apply(sup, x, False, path=jnp.asarray(idx, jnp.int32))['out']
  chex.assert_trees_all_close(got, want, atol=1e-4 * float(jnp.max(jnp.abs(want))))
  derived, dvars = supernet_to_arch(sup, space, choices)
  assert derived.with_ops([[o for o in st.ops if o != 'skip'] for st in derived.stages]) == (
      seed_arch)
  chex.assert_trees_all_equal(dvars, jax.tree.map(np.asarray, seed))


def test_collect_moves_skips_last_and_takes_the_chosen_op(seeded):
  seed_arch, seed, space, _ = seeded
  space = spaces.limit_depth(space, (1, 2, 3, 2, 2, 2, 1))  # a smaller supernet compiles faster
  sup = seed_to_supernet(seed, seed_arch, space)
  rng = np.random.default_rng(3)
  choices = [int(rng.integers(len(space.candidates(i, j)))) for i, j in space.searched_layers()]
  arch, dvars = supernet_to_arch(sup, space, choices)
  shapes = init_variables(Backbone(arch), 0, (1, 32, 32, 3))
  chex.assert_trees_all_equal_shapes(shapes, dvars)
  x = jax.random.normal(jax.random.key(1), (1, 32, 32, 3))
  want = sn.Supernet(space).apply(sup, x, False, path=jnp.asarray(choices, jnp.int32))['out']
  got = Backbone(arch).apply(dvars, x, False)['out']
  chex.assert_trees_all_close(got, want, atol=1e-4 * float(jnp.max(jnp.abs(want))))
