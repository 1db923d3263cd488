"""Task heads that read a backbone's feature dict."""

from fna_jax.models.heads.deeplab import ASPP, DeepLabV3Head, DeepLabV3PlusHead

__all__ = ['ASPP', 'DeepLabV3Head', 'DeepLabV3PlusHead']
