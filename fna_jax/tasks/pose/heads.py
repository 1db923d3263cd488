"""SimpleBaseline's deconvolution head (Xiao et al. 2018; paper Sec. 4.3.1 and Tab. 6).

``feats['out']`` (the body's last stage: MobileNetV2's 320 channels at output stride 32, no
1280 conv) -> ``num_deconv`` x [4x4 stride-2 transposed conv to ``channels`` (no bias) -> BN ->
ReLU] -> 1x1 conv with bias to ``num_joints`` heatmaps: ``(N, H/32, W/32, C) -> (N, H/4, W/4,
num_joints)`` for three deconvs (256x256 input -> 64x64 heatmaps).

The transposed convs are torch's ``ConvTranspose2d(kernel_size=4, stride=2, padding=1,
output_padding=0)``: exactly 2x upsampling.  As a flax ``nn.ConvTranspose`` (kernel
``(k, k, C_in, C_out)``, ``transpose_kernel=False``) that is explicit padding ``k - 1 - p`` on
both sides of the stride-dilated input; a torch weight ``w`` of shape ``(C_in, C_out, k, k)``
is the flax kernel ``w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)`` (spatially flipped).

Initialisation as SimpleBaseline's ``PoseResNet.init_weights``: transposed-conv weights and the
final conv's weight normal(0, 0.001^2), its bias 0, BN scale 1 and bias 0.  The loops draw
variables with :func:`fna_jax.models.init.random_like`; this module registers that std for the
head's ``deconv{i}`` and ``final_layer`` kernels there.  (``module.init`` itself draws the
transposed convs from normal(0, 0.001^2) but the final 1x1 conv, a :class:`fna_jax.ops.Conv`,
from its default kaiming normal.)

Parameter paths under the head: ``deconv{i}`` (``kernel``), ``deconv{i}_bn``, ``final_layer``
(``kernel``, ``bias``).
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax

from fna_jax.models import init as init_lib
from fna_jax.models.blocks import batch_norm
from fna_jax.ops import Conv

INIT_STD = 0.001  # SimpleBaseline: nn.init.normal_(m.weight, std=0.001) (deconvs, final layer)
_INIT_LAYER = re.compile(r'deconv\d+|final_layer')


def torch_deconv_padding(kernel: int, padding: int = 1, output_padding: int = 0):
  """flax ``nn.ConvTranspose`` padding of torch's ``ConvTranspose2d(kernel, padding=padding,
  output_padding=output_padding)``: ``k - 1 - p`` before, ``k - 1 - p + output_padding`` after."""
  lo = kernel - 1 - padding
  return ((lo, lo + output_padding),) * 2


def _is_head_init_kernel(keys: tuple[str, ...]) -> bool:
  """The kernels SimpleBaseline initialises with std 0.001: ``head/.../deconv{i}/kernel`` and
  ``head/.../final_layer/kernel``."""
  return (len(keys) >= 3 and keys[-1] == 'kernel' and 'head' in keys[:-2]
          and _INIT_LAYER.fullmatch(keys[-2]) is not None)


init_lib.register_normal_init(_is_head_init_kernel, INIT_STD)


class SimpleBaselineHead(nn.Module):
  """``feats['out'] (N, h, w, C) -> (N, h * 2**num_deconv, w * 2**num_deconv, num_joints)``.

  ``kernel``: the transposed convs' size (4, with padding 1: SimpleBaseline's
  ``NUM_DECONV_KERNELS``); ``conv``: the module of the final 1x1 conv (``ops.Conv`` or
  ``ops.conv_module(impl)``).
  """
  num_joints: int = 16
  channels: int = 256
  num_deconv: int = 3
  kernel: int = 4
  conv: Any = Conv

  @nn.compact
  def __call__(self, feats, train: bool = False):
    if self.kernel != 4:
      # SimpleBaseline's _get_deconv_cfg: 4 -> padding 1, 3 -> padding 1 + output_padding 1,
      # 2 -> padding 0; only 4 is what the paper uses.
      raise ValueError(f'SimpleBaselineHead supports 4x4 transposed convs, got {self.kernel}')
    y = feats['out']
    for i in range(self.num_deconv):
      y = nn.ConvTranspose(self.channels, (self.kernel, self.kernel), strides=(2, 2),
                           padding=torch_deconv_padding(self.kernel, 1), use_bias=False,
                           kernel_init=nn.initializers.normal(INIT_STD), name=f'deconv{i}')(y)
      y = jax.nn.relu(batch_norm(train, f'deconv{i}_bn')(y))
    return self.conv(self.num_joints, 1, use_bias=True, name='final_layer')(y)
