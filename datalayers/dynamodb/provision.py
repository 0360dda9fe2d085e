"""The table: created from the CloudFormation template (`provision`), checked before first
use, and `upgrade` of a table written by Chainlit's DynamoDB layer (or by an earlier version
of this one) whose `UserThread` index does not project what a sidebar page reads.

DynamoDB cannot change the projection of an existing index, so `upgrade` deletes and
recreates it; the sidebar is empty while the new index builds.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from .client import INCOMPATIBLE_TABLE, DynamoDBError
from .items import (
    FEEDBACK_DOWN,
    FEEDBACK_UP,
    INDEX_ATTRIBUTES,
    INDEX_NAME,
    deserialize,
    remove_prefix,
    serialize,
    thread_key,
)

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "cloudformation" / "dynamodb-table.json"
logger = logging.getLogger("chainlit").getChild("DynamoDB")


def load_table_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """The `Properties` of the one `AWS::DynamoDB::Table` resource in the template."""
    with open(path, encoding="utf-8") as fh:
        template = json.load(fh)
    tables = [r for r in template.get("Resources", {}).values() if r.get("Type") == "AWS::DynamoDB::Table"]
    if len(tables) != 1:
        raise ValueError(f"{path}: expected exactly one AWS::DynamoDB::Table resource, found {len(tables)}")
    return tables[0]["Properties"]


def create_table_request(properties: dict[str, Any], table_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Translate CloudFormation table properties into a CreateTable request, plus the
    settings that need their own API calls after creation (PITR, TTL).

    Unknown properties are an error, so the template and this code cannot drift apart."""
    request: dict[str, Any] = {"TableName": table_name}
    after: dict[str, Any] = {}
    copied = ("AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes", "LocalSecondaryIndexes",
              "BillingMode", "ProvisionedThroughput", "TableClass", "DeletionProtectionEnabled", "Tags")
    for name, value in properties.items():
        if name == "TableName":
            continue  # a {"Ref": ...} in the template; the URL names the table
        if name in copied:
            request[name] = value
        elif name == "SSESpecification":
            sse = {"Enabled": bool(value.get("SSEEnabled", False))}
            if value.get("SSEType"):
                sse["SSEType"] = value["SSEType"]
            if value.get("KMSMasterKeyId"):
                sse["KMSMasterKeyId"] = value["KMSMasterKeyId"]
            request["SSESpecification"] = sse
        elif name == "StreamSpecification":
            request["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": value["StreamViewType"]}
        elif name == "PointInTimeRecoverySpecification":
            after["PointInTimeRecoveryEnabled"] = bool(value.get("PointInTimeRecoveryEnabled"))
        elif name == "TimeToLiveSpecification":
            after["TimeToLive"] = {"AttributeName": value["AttributeName"], "Enabled": bool(value.get("Enabled"))}
        else:
            raise ValueError(f"template property {name!r} is not supported by the provisioning command")
    return request, after


def check_table_description(table: dict[str, Any]) -> None:
    """Raise when an existing table cannot serve this layer: a table made by Chainlit's
    layer, or by an earlier version of this one, whose UserThread index does not project
    what a sidebar page reads (the page is built from the index alone)."""
    keys = {k["AttributeName"]: k["KeyType"] for k in table.get("KeySchema", [])}
    if keys != {"PK": "HASH", "SK": "RANGE"}:
        raise DynamoDBError(f"table {table.get('TableName')!r} must have the key PK (hash), SK (range)",
                            INCOMPATIBLE_TABLE)
    index = next((i for i in table.get("GlobalSecondaryIndexes", []) if i["IndexName"] == INDEX_NAME), None)
    if index is None:
        raise DynamoDBError(f"table {table.get('TableName')!r} has no {INDEX_NAME!r} index; see cloudformation/",
                            INCOMPATIBLE_TABLE)
    projection = index.get("Projection", {})
    if projection.get("ProjectionType") != "ALL":
        missing = set(INDEX_ATTRIBUTES) - set(projection.get("NonKeyAttributes", []))
        if missing:
            raise DynamoDBError(
                f"index {INDEX_NAME!r} of table {table.get('TableName')!r} does not project {sorted(missing)}; "
                "recreate the index: python -m datalayers.dynamodb upgrade --url dynamodb://TABLE?region=...",
                INCOMPATIBLE_TABLE,
            )


async def provision_table(client, table_name: str, template: Path = TEMPLATE_PATH, wait_seconds: int = 600) -> bool:
    """Create the table from the CloudFormation template unless it exists, wait until it
    is ACTIVE, and apply point-in-time recovery and TTL. Idempotent. True if created."""
    request, after = create_table_request(load_table_template(template), table_name)
    created = False
    try:
        await client.describe_table(TableName=table_name)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise DynamoDBError(f"provision: describe_table {table_name!r} failed: {exc}") from exc
        try:
            await client.create_table(**request)
            created = True
            logger.info("provision: creating table %s", table_name)
        except ClientError as create_exc:
            if create_exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
                raise DynamoDBError(f"provision: create_table {table_name!r} failed: {create_exc}") from create_exc
    waiter = client.get_waiter("table_exists")
    await waiter.wait(TableName=table_name, WaiterConfig={"Delay": 2, "MaxAttempts": max(1, wait_seconds // 2)})
    description = (await client.describe_table(TableName=table_name))["Table"]
    check_table_description(description)
    try:
        if "PointInTimeRecoveryEnabled" in after:
            backups = await client.describe_continuous_backups(TableName=table_name)
            status = (backups["ContinuousBackupsDescription"].get("PointInTimeRecoveryDescription", {})
                      .get("PointInTimeRecoveryStatus"))
            if (status == "ENABLED") != after["PointInTimeRecoveryEnabled"]:
                await client.update_continuous_backups(
                    TableName=table_name,
                    PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": after["PointInTimeRecoveryEnabled"]},
                )
        if "TimeToLive" in after:
            ttl = (await client.describe_time_to_live(TableName=table_name))["TimeToLiveDescription"]
            enabled = ttl.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")
            if enabled != after["TimeToLive"]["Enabled"]:
                await client.update_time_to_live(TableName=table_name, TimeToLiveSpecification=after["TimeToLive"])
    except ClientError as exc:
        raise DynamoDBError(f"provision: configuring table {table_name!r} failed: {exc}") from exc
    return created


async def _wait_for_index(client, table_name: str, present: bool, wait_seconds: int) -> None:
    """Poll until the UserThread index is ACTIVE (present=True) or gone."""
    for _ in range(max(1, wait_seconds // 5)):
        indexes = (await client.describe_table(TableName=table_name))["Table"].get("GlobalSecondaryIndexes", [])
        index = next((i for i in indexes if i["IndexName"] == INDEX_NAME), None)
        if (index is None and not present) or (index is not None and present and index.get("IndexStatus") == "ACTIVE"):
            return
        await asyncio.sleep(5)
    raise DynamoDBError(f"upgrade: index {INDEX_NAME!r} of {table_name!r} did not become "
                        f"{'ACTIVE' if present else 'deleted'} within {wait_seconds}s")


async def upgrade_table(client, table_name: str, template: Path = TEMPLATE_PATH,
                        wait_seconds: int = 3600) -> dict[str, int]:
    """Make a table written by Chainlit's DynamoDB layer (or an earlier version of this one)
    serve this one. Idempotent.

    1. Recreate the UserThread index with the template's projection when it lacks an
       attribute (DynamoDB cannot change the projection of an existing index). The sidebar
       is empty while the new index builds.
    2. Count the feedback Chainlit's layer stored on steps into each thread's counters,
       so the feedback filter finds those threads. This reads the whole table once (a
       Scan, the only one in this module): run it once, off-peak.
    """
    properties = load_table_template(template)
    wanted = next(i for i in properties["GlobalSecondaryIndexes"] if i["IndexName"] == INDEX_NAME)
    recreated = 0
    try:
        table = (await client.describe_table(TableName=table_name))["Table"]
        try:
            check_table_description(table)
        except DynamoDBError:
            if any(i["IndexName"] == INDEX_NAME for i in table.get("GlobalSecondaryIndexes", [])):
                logger.warning("upgrade: deleting index %s of %s to recreate it", INDEX_NAME, table_name)
                await client.update_table(TableName=table_name,
                                          GlobalSecondaryIndexUpdates=[{"Delete": {"IndexName": INDEX_NAME}}])
                await _wait_for_index(client, table_name, present=False, wait_seconds=wait_seconds)
            key_names = {k["AttributeName"] for k in wanted["KeySchema"]}
            create = {k: v for k, v in wanted.items() if k in ("IndexName", "KeySchema", "Projection")}
            if table.get("BillingModeSummary", {}).get("BillingMode") == "PROVISIONED":
                create["ProvisionedThroughput"] = wanted.get("ProvisionedThroughput") or {
                    "ReadCapacityUnits": 5, "WriteCapacityUnits": 5}
            await client.update_table(
                TableName=table_name,
                AttributeDefinitions=[a for a in properties["AttributeDefinitions"] if a["AttributeName"] in key_names],
                GlobalSecondaryIndexUpdates=[{"Create": create}],
            )
            await _wait_for_index(client, table_name, present=True, wait_seconds=wait_seconds)
            recreated = 1

        counted: set = set()
        counts: dict[str, dict[int, int]] = {}
        kwargs: dict[str, Any] = {"TableName": table_name, "ProjectionExpression": "PK, SK, feedback, #up",
                                  "ExpressionAttributeNames": {"#up": FEEDBACK_UP}}
        while True:
            page = await client.scan(**kwargs)
            for raw in page.get("Items", []):
                item = deserialize(raw)
                thread_id = remove_prefix(item["PK"], "THREAD#")
                if thread_id is None:
                    continue
                if item["SK"] == "THREAD" and FEEDBACK_UP in item:
                    counted.add(thread_id)
                feedback = item.get("feedback")
                if remove_prefix(item["SK"], "STEP#") is not None and isinstance(feedback, dict) \
                        and feedback.get("value") in (0, 1):
                    counts.setdefault(thread_id, {0: 0, 1: 0})[int(feedback["value"])] += 1
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        updated = 0
        for thread_id, values in counts.items():
            if thread_id in counted:
                continue
            try:
                await client.update_item(
                    TableName=table_name, Key=serialize(thread_key(thread_id)),
                    UpdateExpression="SET #up = :up, #down = :down",
                    ConditionExpression="attribute_exists(PK) AND attribute_not_exists(#up)",
                    ExpressionAttributeNames={"#up": FEEDBACK_UP, "#down": FEEDBACK_DOWN},
                    ExpressionAttributeValues=serialize({":up": values[1], ":down": values[0]}),
                )
                updated += 1
            except ClientError as exc:
                # The thread is gone, or the running layer counted it meanwhile (it
                # recounts from the steps itself): either way there is nothing to set.
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
                logger.info("upgrade: thread %s already counted or deleted", thread_id)
    except ClientError as exc:
        raise DynamoDBError(f"upgrade {table_name!r} failed: {exc}", exc.response.get("Error", {}).get("Code")) from exc
    return {"index_recreated": recreated, "threads_counted": updated}
