"""A legacy Flower server (start_server, deprecated but working in 1.41): FedAvg for 3 rounds, one client.

    server.py ADDRESS
"""
import sys

import flwr as fl

fl.server.start_server(
    server_address=sys.argv[1],
    config=fl.server.ServerConfig(num_rounds=3),
    strategy=fl.server.strategy.FedAvg(min_fit_clients=1, min_evaluate_clients=1, min_available_clients=1),
)
