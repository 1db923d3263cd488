"""Weight converters into fna_jax seed checkpoints.

``python -m weights_convert --arch mobilenet_v2 --src mobilenet_v2.pth --dst seeds/mobilenet_v2``
converts torchvision ImageNet weights and writes them with :func:`fna_jax.seeds.save_seed`.
"""

from __future__ import annotations

from weights_convert.torchvision import (ConversionError, convert, load_torchvision_checkpoint,
                                         logit_parity)

__all__ = ['ConversionError', 'convert', 'load_torchvision_checkpoint', 'logit_parity']
