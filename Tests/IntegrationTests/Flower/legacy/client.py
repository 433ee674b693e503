"""A legacy Flower client for fem-client's `script` mode: reports each round, or its error, through fem_reporter.

    client.py SERVER_ADDRESS          (FAIL_AT_ROUND=N makes round N raise)
"""
import os
import sys

import numpy as np
import flwr as fl

from fem_reporter import Reporter

reporter = Reporter()
fail_at = int(os.environ.get("FAIL_AT_ROUND", "0"))


class Client(fl.client.NumPyClient):
    def __init__(self):
        self.round = 0

    def get_parameters(self, config):
        return [np.zeros(3)]

    def fit(self, parameters, config):
        self.round += 1
        if self.round == fail_at:
            raise ValueError(f"bad data in partition 7 (round {self.round})")
        reporter.model(self.round, accuracy=0.5 + 0.1 * self.round, loss=1.0 / self.round)
        return [p + 1.0 for p in parameters], 10, {}

    def evaluate(self, parameters, config):
        return 0.5, 10, {"accuracy": 0.5 + 0.1 * self.round}


client = Client()
try:
    fl.client.start_client(server_address=sys.argv[1], client=client.to_client())
except Exception as e:  # report, then fail
    reporter.error(e)
    sys.exit(1)
if client.round == 0 or (fail_at and client.round >= fail_at):
    # start_client returns when the server ends the session; a failed fit is reported by the server, not raised.
    reporter.error(RuntimeError(f"bad data in partition 7 (round {fail_at})") if fail_at else "no round was run")
    sys.exit(1)
