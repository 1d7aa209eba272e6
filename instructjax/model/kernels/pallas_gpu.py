"""The old name of `model.kernels.gpu_attention` (attention on a GPU: the glue around `flash_gpu`'s kernel and JAX's
Pallas `mha`); old imports of it keep working."""

from instructjax.model.kernels.gpu_attention import gpu_attention as pallas_gpu_attention  # noqa: F401
from instructjax.model.kernels.gpu_attention import tiles  # noqa: F401
