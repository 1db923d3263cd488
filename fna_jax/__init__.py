"""fna_jax: FNA++ (Fast Network Adaptation via Parameter Remapping and Architecture Search) in JAX."""

__version__ = '0.1.0'
