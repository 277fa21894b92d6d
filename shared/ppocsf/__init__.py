"""OCSF 1.1.0 normalisation of the collector's records, and the Security Lake Parquet writer.

Kept apart from ``ppcollector`` on purpose: the pollers' Lambda layer is built from ``ppcollector``
only, and the writer's dependency (pyarrow) must not enter it (README, "OCSF and Security Lake").
"""

OCSF_VERSION = "1.1.0"
