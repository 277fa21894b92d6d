"""``ppctl``, the operator's command line: instances, status, backfill, logs, and the local stack.

Tooling, not runtime: it is installed for the CLI (``pip install .``) and never shipped in the Lambda
layer or the PoD image, which carry only ``ppcollector``.
"""
