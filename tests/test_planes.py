"""Bit planes against numpy's own packbits: plane ``k`` is ``packbits`` of bit ``k`` of every code."""

from __future__ import annotations

import numpy as np
import pytest

from vespa_quant.quantize.planes import decode_planes, encode_planes, gray, role_of


@pytest.mark.parametrize("dim", [1, 7, 8, 9, 97, 384])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("use_gray", [False, True])
def test_planes_are_packbits_of_each_bit_and_decode_back(dim: int, bits: int, use_gray: bool) -> None:
    rng = np.random.default_rng(dim * 10 + bits)
    codes = rng.integers(0, 1 << bits, size=(37, dim), dtype=np.uint8)
    planes = encode_planes(codes, bits, use_gray)
    words = gray(codes) if use_gray else codes
    for k in range(bits):
        expected = np.packbits((words >> k) & 1, axis=1)
        np.testing.assert_array_equal(planes[role_of(bits, k, "")].view(np.uint8), expected)
    np.testing.assert_array_equal(decode_planes(planes, bits, use_gray, dim), codes)


def test_decoding_ignores_padding_bits_past_the_dimension() -> None:
    codes = np.array([[1, 0, 1]], dtype=np.uint8)
    planes = encode_planes(codes, 1, False)
    role = role_of(1, 0, "")
    planes[role] = (planes[role].view(np.uint8) | np.uint8(0b00011111)).view(np.int8)
    np.testing.assert_array_equal(decode_planes(planes, 1, False, 3), codes)
