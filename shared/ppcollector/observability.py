"""One Logger and one way to emit metrics, shared by the Lambdas and the PoD task.

Logs are structured JSON (Powertools Logger) carrying ``connector`` and ``instance``; metrics are EMF
blobs printed to stdout (CloudWatch extracts them from the log stream), one blob per poll and instance.
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "proofpoint-collector")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "ProofpointCollector")

logger = Logger(service=SERVICE)

COUNT = MetricUnit.Count
SECONDS = MetricUnit.Seconds


def emit_metrics(connector: str, instance: str | None, values: dict[str, tuple[float, MetricUnit]],
                 **dimensions: str) -> None:
    """Emit one EMF blob with dimensions ``connector`` (and ``instance`` and any others when given)."""
    if not values:
        return
    metrics = EphemeralMetrics(namespace=NAMESPACE, service=SERVICE)
    metrics.add_dimension(name="connector", value=connector)
    if instance:
        metrics.add_dimension(name="instance", value=instance)
    for name, value in dimensions.items():
        metrics.add_dimension(name=name, value=value)
    for name, (value, unit) in values.items():
        metrics.add_metric(name=name, unit=unit, value=value)
    metrics.flush_metrics()
