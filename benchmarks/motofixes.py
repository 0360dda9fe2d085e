"""Code the benchmarks' moto child processes run before starting the server.

moto's server handles each HTTP request in its own thread and its DynamoDB backend has no
locking; a TransactWriteItems deep-copies the whole table to roll back, which fails ("dictionary
changed size during iteration") or undoes other requests' writes when transactions run
concurrently. Real DynamoDB does neither. These patches make each item operation atomic and a
failed transaction restore only the items it wrote, so the benchmarks measure the layers, not
moto's races. (The tests apply the same lock in-process: tests/datalayers/test_dynamodb_contract.py.)
"""

MOTO_FIXES = r"""
import copy, functools, logging, sys, threading, types
from moto.dynamodb import models
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.table import Table
from moto.server import ThreadedMotoServer

moto_lock = threading.RLock()
for name in ("get_item", "put_item", "update_item", "delete_item", "query", "scan", "batch_get_item",
             "batch_write_item"):
    if hasattr(DynamoDBBackend, name):
        original = getattr(DynamoDBBackend, name)
        def atomic(self, *args, _original=original, **kwargs):
            with moto_lock:
                return _original(self, *args, **kwargs)
        setattr(DynamoDBBackend, name, functools.wraps(original)(atomic))

# moto's rollback copy of a whole table becomes the table itself; the items are saved below.
models.copy = types.SimpleNamespace(
    deepcopy=lambda value, memo=None: value if isinstance(value, Table) else copy.deepcopy(value, memo),
    copy=copy.copy)
transact = DynamoDBBackend.transact_write_items

def transact_write_items(self, transact_items):
    with moto_lock:
        saved = []
        for entry in transact_items:
            kind, op = next(iter(entry.items()))
            table = self.tables.get(op.get("TableName"))
            if table is None:
                continue
            attrs = op["Item"] if kind == "Put" else op["Key"]
            key = {k: attrs[k] for k in (table.hash_key_attr, table.range_key_attr) if k and k in attrs}
            hash_value, range_value = self.get_keys_value(table, key)
            saved.append((table, hash_value, range_value, copy.deepcopy(table.get_item(hash_value, range_value))))
        try:
            return transact(self, transact_items)
        except Exception:
            for table, hash_value, range_value, item in reversed(saved):
                holder = table.items[hash_value] if range_value is not None else table.items
                slot = range_value if range_value is not None else hash_value
                if item is None:
                    holder.pop(slot, None)
                else:
                    holder[slot] = item
            raise

DynamoDBBackend.transact_write_items = transact_write_items
"""
