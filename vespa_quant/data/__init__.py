"""Datasets in BEIR's layout: our validating file reader, BEIR's dicts in and out, downloads."""

from vespa_quant.data.beir import BeirDataset, load_beir
from vespa_quant.data.interop import from_beir, load_with_beir, to_beir

__all__ = ["BeirDataset", "from_beir", "load_beir", "load_with_beir", "to_beir"]
