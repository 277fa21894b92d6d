"""``ppctl``, the operator's command line: instances, status, backfill, logs, the local stack, and the
analysts' ``query`` and ``replay`` over the archive.

Tooling, not runtime: it is installed for the CLI (``pip install .``) and never shipped in the Lambda
layer or the PoD image, which carry only ``ppcollector``.
"""
