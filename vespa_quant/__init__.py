"""vespa-quant: quantized text embeddings on Vespa.

Pipeline (one package per stage, data flows one way):
data -> embed -> quantize -> engine | vespa -> evaluate -> drift -> report.
"""

__version__ = "0.1.0"
