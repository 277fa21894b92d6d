"""Fencing on DynamoDB (the local emulator): a cursor write carries its writer's lease version as a
fencing token in its conditional PutItem, so a holder frozen past its lease is refused once the new
holder took the lease over, for TAP, CASB and PoD alike.

The scenarios are those of tests/unit/test_delivery.py, run on a DynamoDB table instead of MemoryKV.
"""

from __future__ import annotations

import uuid

import boto3
import pytest

from ppcollector.kvstore import DynamoKV
from tests.unit.test_casb_poller import _fresh_token_cache as _fresh_token_cache  # noqa: F401 (autouse)
from tests.unit.test_delivery import (
    casb_holder_frozen_past_its_lease,
    pod_stream_frozen_past_its_lease,
    store_refuses_a_write_with_a_lower_fencing_token,
    tap_holder_frozen_past_its_lease,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def dynamo_kv(aws_endpoint):
    """A fresh table shaped like the stack's state table (pk, sk)."""
    client = boto3.client("dynamodb")
    name = f"fencing-{uuid.uuid4().hex[:8]}"
    client.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                              {"AttributeName": "sk", "AttributeType": "S"}],
                        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                   {"AttributeName": "sk", "KeyType": "RANGE"}])
    yield DynamoKV(name, client)
    client.delete_table(TableName=name)


def test_dynamodb_refuses_a_cursor_write_with_a_lower_fencing_token(dynamo_kv):
    store_refuses_a_write_with_a_lower_fencing_token(dynamo_kv)


def test_a_tap_poll_frozen_past_its_lease_is_refused_on_dynamodb(dynamo_kv, caplog):
    tap_holder_frozen_past_its_lease(dynamo_kv, caplog)


def test_a_casb_poll_frozen_past_its_lease_writes_nothing_on_dynamodb(dynamo_kv, caplog):
    casb_holder_frozen_past_its_lease(dynamo_kv, caplog)


def test_a_pod_stream_whose_lease_was_taken_over_writes_no_checkpoint_on_dynamodb(dynamo_kv):
    pod_stream_frozen_past_its_lease(dynamo_kv)
