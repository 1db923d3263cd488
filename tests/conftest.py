"""Test set-up: 8 simulated CPU devices (set before jax is imported) and shared fixtures."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402  (must come after XLA_FLAGS)
import pytest  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')


@pytest.fixture(scope='session')
def devices():
  return jax.devices()
