"""moto_server for Gantry's tests, with DynamoDB requests serialised.

moto answers requests on threads and takes no lock around a DynamoDB
operation: two conditional writes (or transactions) on one item can both
pass their conditions and both apply, which DynamoDB itself never allows.
The engine relies on exactly that guarantee, so this server lets one
DynamoDB request in at a time (a faithful model of per-item atomicity, if
a slower one). SQS requests, long polls among them, stay concurrent.

    python3 tests/moto_server.py HOST PORT
"""

import os
import sys
import threading

from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

host, port = sys.argv[1], int(sys.argv[2])
os.environ.setdefault("MOTO_PORT", str(port))
app = DomainDispatcherApplication(create_backend_app)
dynamodb = threading.Lock()


def serialised(environ, start_response):
    if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB"):
        with dynamodb:
            # The whole answer is made inside the lock.
            return list(app(environ, start_response))
    return app(environ, start_response)


run_simple(host, port, serialised, threaded=True)
