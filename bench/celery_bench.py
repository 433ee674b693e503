"""The Celery side of bench/dispatch.sh: one no-op task that runs `true`, on the benchmark's broker (TLS, the
broker's administrator account: Celery declares its own `celery` queue and exchange), results over AMQP (rpc://).
Environment: BENCH_BROKER_DIR, BENCH_PORT."""
import os
import ssl
import subprocess
from urllib.parse import quote

from celery import Celery

_dir = os.environ["BENCH_BROKER_DIR"]
_password = quote(open(f"{_dir}/password").read().strip(), safe="")
app = Celery("celery_bench", broker=f"amqp://fem:{_password}@localhost:{os.environ['BENCH_PORT']}//",
             backend="rpc://")
app.conf.broker_use_ssl = {"ca_certs": f"{_dir}/ca.pem", "certfile": f"{_dir}/operator.pem",
                           "keyfile": f"{_dir}/operator.key", "cert_reqs": ssl.CERT_REQUIRED,
                           "server_hostname": "localhost"}
app.conf.broker_connection_retry_on_startup = True
app.conf.worker_hijack_root_logger = False


@app.task
def noop():
    subprocess.run(["true"], check=True)
    return 0
