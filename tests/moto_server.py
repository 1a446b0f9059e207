"""moto_server for Gantry's tests, with DynamoDB requests serialised.

moto answers requests on threads and takes no lock around a DynamoDB
operation: two conditional writes (or transactions) on one item can both
pass their conditions and both apply, which DynamoDB itself never allows.
The engine relies on exactly that guarantee, so this server lets one
DynamoDB request in at a time, in the order they came (a faithful model
of per-item atomicity, if a slower one). SQS requests, long polls among
them, stay concurrent.

    python3 tests/moto_server.py HOST PORT
"""

import copy
import inspect
import os
import sys
import threading

from werkzeug.serving import run_simple
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

host, port = sys.argv[1], int(sys.argv[2])
os.environ.setdefault("MOTO_PORT", str(port))
app = DomainDispatcherApplication(create_backend_app)


class FairLock:
    """A lock taken in the order it was asked for. threading.Lock is not
    fair: three busy workers could keep an API request waiting for a
    minute."""

    def __init__(self):
        self._changed = threading.Condition()
        self._next_ticket = 0
        self._serving = 0

    def __enter__(self):
        with self._changed:
            ticket = self._next_ticket
            self._next_ticket += 1
            while ticket != self._serving:
                self._changed.wait()

    def __exit__(self, *_):
        with self._changed:
            self._serving += 1
            self._changed.notify_all()


dynamodb = FairLock()


# moto's TransactWriteItems deep-copies the whole table (once per item of
# the transaction) to roll back on a failed condition, and its Query on the
# table reads every item to find one partition: both grow with the table,
# and a test of 200 runs slowed to minutes per promotion. Here a
# transaction keeps copies of the items it names instead, and a query reads
# its partition only. The answers are the same.


def _shared(table, _memo):
    return table


Table.__deepcopy__ = _shared
_transact = DynamoDBBackend.transact_write_items


def _item_key(table, op):
    if "Key" in op:
        return op["Key"]
    attrs = op.get("Item", {})
    return {a: attrs[a] for a in (table.hash_key_attr, table.range_key_attr) if a and a in attrs}


def _put_back(table, key, item):
    hash_value = DynamoType(key[table.hash_key_attr])
    if table.range_key_attr:
        range_value = DynamoType(key[table.range_key_attr])
        if item is None:
            table.items[hash_value].pop(range_value, None)
        else:
            table.items[hash_value][range_value] = item
    elif item is None:
        table.items.pop(hash_value, None)
    else:
        table.items[hash_value] = item


def transact_write_items(backend, transact_items):
    saved = []
    for entry in transact_items[:100]:
        _, op = next(iter(entry.items()))
        table = backend.tables.get(op.get("TableName"))
        key = _item_key(table, op) if table is not None else None
        if not key or table.hash_key_attr not in key:
            continue
        try:
            current = backend.get_item(table.name, key)
        except Exception:
            continue
        saved.append((table, key, copy.deepcopy(current)))
    try:
        return _transact(backend, transact_items)
    except Exception:
        for table, key, item in reversed(saved):
            _put_back(table, key, item)
        raise


DynamoDBBackend.transact_write_items = transact_write_items
_query = Table.query


_query_arguments = inspect.signature(_query)


def query(table, *args, **kwargs):
    arguments = _query_arguments.bind(table, *args, **kwargs).arguments
    hash_key = arguments.get("hash_key")
    if arguments.get("index_name") or hash_key is None or not table.range_key_attr:
        return _query(table, *args, **kwargs)
    partition = list(table.items.get(hash_key, {}).values())
    table.all_items = lambda: partition
    try:
        return _query(table, *args, **kwargs)
    finally:
        del table.all_items


Table.query = query


def serialised(environ, start_response):
    if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB"):
        with dynamodb:
            # The whole answer is made inside the lock.
            return list(app(environ, start_response))
    return app(environ, start_response)


run_simple(host, port, serialised, threaded=True)
