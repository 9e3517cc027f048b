"""The method registry: a new method is one new module plus one line here."""

from __future__ import annotations

from vespa_quant.errors import VespaQuantError
from vespa_quant.quantize.base import Method
from vespa_quant.quantize.binary import BinaryAsym, BinaryHamming, BinaryMedianAsym, BinaryRescore
from vespa_quant.quantize.float_methods import BFloat16, Float32
from vespa_quant.quantize.four_level import LloydMaxEmpir, LloydMaxGauss, QuaternaryAsym
from vespa_quant.quantize.int8 import Int8Asym

METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Float32(), BFloat16(), Int8Asym(), BinaryAsym(), BinaryMedianAsym(), BinaryHamming(),
        BinaryRescore(), QuaternaryAsym(), LloydMaxGauss(), LloydMaxEmpir(),
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise VespaQuantError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}") from None


def parse_methods(spec: str | None) -> list[Method]:
    """``"all"``/None -> every method; otherwise a comma-separated list of names."""
    if not spec or spec == "all":
        return list(METHODS.values())
    return [get_method(name.strip()) for name in spec.split(",") if name.strip()]
