"""bitsandbytes' NF4 by brute force, for tests without bitsandbytes (benchmarks/qlora_bitsandbytes.py checks it
against bitsandbytes itself): `Linear4bit` quantizes the HF weight [out, in] flattened row-major in blocks of 64, an
absmax each (float32), x * (1 / absmax), the nearest of its 16 values (the lower on a tie), two codes a byte with the
first in the high nibble; `dequantize_4bit` gives value * absmax back."""

from __future__ import annotations

import numpy as np

# bitsandbytes' published NF4 values (functional.get_4bit_type("nf4"), its CUDA kernels' nf4_dequantization_lut)
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], np.float32)
BLOCK = 64
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def quantize_4bit(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(packed codes [n / 2] uint8, absmax [n / 64] float32) of `weight` (any shape, n a multiple of 64)."""
    flat = np.asarray(weight, np.float32).reshape(-1, BLOCK)
    absmax = np.abs(flat).max(-1)
    scaled = flat * (np.float32(1) / np.where(absmax == 0, np.float32(1), absmax))[:, None]
    codes = np.abs(scaled.reshape(-1)[:, None] - NF4).argmin(-1).astype(np.uint8)  # argmin: the lower on a tie
    return (codes[0::2] << 4) | codes[1::2], absmax


def dequantize_4bit(packed: np.ndarray, absmax: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    values = np.stack([NF4[packed >> 4], NF4[packed & 15]], -1).reshape(-1, BLOCK)
    return (values * absmax[:, None]).reshape(shape)


def dequantize_projections(model) -> None:
    """A transformers model's decoder projections (the modules `load_in_4bit` quantizes; not the embedding or the
    head) replaced, in place, by their NF4 round trip: the weights a bitsandbytes 4-bit model computes with."""
    import torch

    with torch.no_grad():
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1] in PROJECTIONS and isinstance(module, torch.nn.Linear):
                weight = module.weight.detach().float().numpy()
                module.weight.copy_(torch.from_numpy(dequantize_4bit(*quantize_4bit(weight), weight.shape)))
