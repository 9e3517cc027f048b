"""``python -m vespa_quant``: the same as the ``vespa-quant`` command."""

from vespa_quant.cli import main

main()
