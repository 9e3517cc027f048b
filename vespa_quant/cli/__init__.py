"""``vespa-quant``: a thin command line over the library; each command calls one public function.

Commands live by stage: :mod:`~vespa_quant.cli.lab` (evaluate, drift, analyze, methods) and
:mod:`~vespa_quant.cli.vespa` (everything that talks to Vespa); shared options and the one input
loader are in :mod:`~vespa_quant.cli.common`.
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    help="Quantized text embeddings on Vespa: evaluate quantizers in process or on Vespa, deploy the "
         "generated application package, feed, recalibrate, and measure streaming drift.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _group() -> None:
    """Quantized text embeddings on Vespa: evaluate quantizers, deploy, feed, measure drift."""


from vespa_quant.cli import lab, vespa  # noqa: E402  (registers the commands on ``app``)

__all__ = ["app", "lab", "main", "vespa"]


def main() -> None:  # pragma: no cover - console entry point
    app(sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    main()
