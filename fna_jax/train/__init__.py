"""Training: meshes and shardings, the search step, checkpoints and loops."""
