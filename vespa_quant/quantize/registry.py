"""The method registry: every module in :mod:`vespa_quant.quantize.methods` that defines
``METHODS`` contributes its methods, so a new method is one new file and nothing else.

Discovery is by import of the package's modules (``pkgutil``), in file-name order, then the
order each module lists; names must be unique across all modules (a duplicate is an error that
names both modules), so two files can never silently shadow each other.
"""

from __future__ import annotations

import importlib
import pkgutil

from vespa_quant.errors import VespaQuantError
from vespa_quant.quantize import methods as methods_package
from vespa_quant.quantize.base import Quantizer

PRESENTATION_ORDER = (
    "float32", "bfloat16", "int8_asym", "binary_asym", "binary_median_asym", "binary_hamming",
    "binary_rescore", "quaternary_asym", "lloyd_max_gauss", "lloyd_max_empir",
)
"""The brief's ten methods first, in its order (tables and plots keep it); others follow by name."""


def discover() -> dict[str, Quantizer]:
    """Every registered method by name, in presentation order."""
    found: dict[str, tuple[Quantizer, str]] = {}
    for info in sorted(pkgutil.iter_modules(methods_package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{methods_package.__name__}.{info.name}")
        for method in getattr(module, "METHODS", ()):
            if method.name in found:
                raise VespaQuantError(f"method {method.name!r} is defined twice: in {found[method.name][1]} "
                                      f"and in {module.__name__}")
            found[method.name] = (method, module.__name__)
    rank = {name: i for i, name in enumerate(PRESENTATION_ORDER)}
    ordered = sorted(found, key=lambda name: (rank.get(name, len(rank)), name))
    return {name: found[name][0] for name in ordered}


METHODS: dict[str, Quantizer] = discover()


def get_method(name: str) -> Quantizer:
    try:
        return METHODS[name]
    except KeyError:
        raise VespaQuantError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}") from None


def parse_methods(spec: str | None) -> list[Quantizer]:
    """``"all"``/None -> every method; otherwise a comma-separated list of distinct names."""
    if spec is None or spec.strip() == "all":
        return list(METHODS.values())
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise VespaQuantError(f"--methods {spec!r} names no method; expected 'all' or names from {', '.join(METHODS)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise VespaQuantError(f"--methods lists {', '.join(repeated)} more than once")
    return [get_method(name) for name in names]
