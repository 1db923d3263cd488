"""FNA++ with DeepLabv3+ on Cityscapes (paper Sec. 4.1.1, Tab. 2's DeepLabv3+ rows).

As in the paper (following Auto-DeepLab), the architecture is searched with DeepLabv3 at output
stride 16 exactly as in ``configs/seg_cityscapes.py``; parameter adaptation and evaluation put the
derived backbone into DeepLabv3+ (regular 3x3 atrous ASPP branches, a decoder on the stride-4
stage), at output stride 16 (5.71M Params, 210.11B MAdds at 1024x2048) or 8 (313.87B MAdds: the
64/96 stages at dilation 2, the 160/320 stages at dilation 4, ASPP rates 12/24/36).

Usage: ``python scripts/fna.py --config=configs/seg_cityscapes_deeplabv3plus.py:8 --workdir=DIR``
(``:16``, the default, for output stride 16).  A search already run with
``configs/seg_cityscapes.py`` can be reused: ``scripts/adapt.py --search_dir=...``.
"""

from configs import seg_cityscapes


def get_config(output_stride: str | None = None):
  os_ = int(output_stride or 16)
  if os_ not in (8, 16):
    raise ValueError(f'output stride must be 8 or 16 (Tab. 2), got {output_stride!r}')
  c = seg_cityscapes.get_config()
  c.adapt.head = 'deeplabv3+'
  c.adapt.output_stride = os_
  return c
