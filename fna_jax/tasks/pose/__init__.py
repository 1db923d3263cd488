"""Human pose estimation (paper Sec. 4.3, Tab. 6): SimpleBaseline on MPII.

* :mod:`~fna_jax.tasks.pose.task`: :class:`PoseTask` (the task interface) and its PCKh evaluator;
* :mod:`~fna_jax.tasks.pose.network`: :class:`PoseNet` (body + head -> heatmaps);
* :mod:`~fna_jax.tasks.pose.heads`: SimpleBaseline's deconvolution head;
* :mod:`~fna_jax.tasks.pose.loss`: JointsMSELoss with target weights;
* :mod:`~fna_jax.tasks.pose.decode`, :mod:`~fna_jax.tasks.pose.affine`: argmax + quarter-pixel
  decoding, flip test, the crop transform and its inverse;
* :mod:`~fna_jax.tasks.pose.metrics`, :mod:`~fna_jax.tasks.pose.visualize`: PCKh, skeletons;
* :mod:`~fna_jax.tasks.pose.joints`: MPII's joints, flip pairs and limbs.
"""

from fna_jax.tasks.pose.heads import SimpleBaselineHead
from fna_jax.tasks.pose.loss import joints_mse_loss, pose_loss
from fna_jax.tasks.pose.network import PoseNet
from fna_jax.tasks.pose.task import PoseEvaluator, PoseTask

__all__ = ['PoseEvaluator', 'PoseNet', 'PoseTask', 'SimpleBaselineHead', 'joints_mse_loss',
           'pose_loss']
