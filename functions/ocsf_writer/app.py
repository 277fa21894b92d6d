"""Security Lake writer Lambda: raw archive objects (S3 events via SQS) → OCSF 1.1.0 Parquet."""

from ppcollector.observability import logger
from ppocsf.writer import writer_from_env


@logger.inject_lambda_context(clear_state=True)
def handler(event, context):
    return writer_from_env().handle_sqs(event)
