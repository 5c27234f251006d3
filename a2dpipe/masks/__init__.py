"""Region masks stage: the instance-segmentation model behind each mask source and the HDF5 region cache.

Modules: ``cache`` (the cache format, writer and reader), ``cropped`` (regions in memory, full frame and cropped),
``device_crop`` (masks quantised and cropped by torch on the model's device, before they reach the host),
``model`` (the mask model ``masks.model`` names; Mask R-CNN builders), ``fcis`` (FCIS; its ``position_sensitive``
score maps, ``fcis_training`` losses and OHEM, ``voting`` mask voting, ``fcis_official`` the official layout, read
by ``convert`` from ``mxnet_params``), ``backbones`` (both models' ResNet bodies), ``data`` (frames as mask-model
targets), ``train`` (``a2dpipe train-mask-model``), ``stage`` (``a2dpipe region-masks``), ``quality`` (``a2dpipe mask-quality``).
"""

from a2dpipe.masks.cache import CroppedMasks, MaskCache, MaskCacheWriter, Regions

__all__ = ["CroppedMasks", "MaskCache", "MaskCacheWriter", "Regions"]
