"""Driver of bench/dispatch.sh, run with the bench venv's Python (it has py-amqp and Celery).

  fem   MODE N   publishes N no-op process tasks to node "bench" as fem-orchestrator and reads fem.events
  celery MODE N  sends N `noop` Celery tasks and waits for their results (rpc:// backend)

MODE is `throughput` (all N published at once; time from the first publish to the last completion seen) or
`latency` (one at a time: publish, wait for its completion, next; median and p95). Prints one JSON line.
Both sides are timed the same way, by this process's clock: publish -> the completion arriving here.
Environment: BENCH_BROKER_DIR (the dev-broker.sh folder), BENCH_PORT.
"""
import json
import os
import ssl
import statistics
import sys
import time
import uuid

broker_dir = os.environ["BENCH_BROKER_DIR"]
port = int(os.environ["BENCH_PORT"])


def tls():
    return {"ca_certs": f"{broker_dir}/ca.pem", "certfile": f"{broker_dir}/operator.pem",
            "keyfile": f"{broker_dir}/operator.key", "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": "localhost"}


def summary(side, mode, lat, span, n):
    out = {"side": side, "mode": mode, "n": n}
    if mode == "throughput":
        out["rate"] = n / span
        out["span_s"] = span
    else:
        lat = sorted(lat)
        out["median_ms"] = statistics.median(lat) * 1000
        out["p95_ms"] = lat[int(len(lat) * 0.95)] * 1000
    print(json.dumps(out), flush=True)


def events_queue(binding):
    """The orchestrator's connection, a channel, and a private queue bound to fem.events for `binding`."""
    import amqp
    password = open(f"{broker_dir}/orchestrator.password").read().strip()
    conn = amqp.Connection(host=f"localhost:{port}", userid="fem-orchestrator", password=password,
                           ssl=tls(), connect_timeout=10)
    conn.connect()
    ch = conn.channel()
    q, _, _ = ch.queue_declare("", exclusive=True, auto_delete=True)
    ch.queue_bind(q, "fem.events", binding)
    return conn, ch, q


def fem(mode, n):
    import amqp
    conn, ch, q = events_queue("node.bench.task.#")
    done = {}

    def on_event(msg):
        e = json.loads(msg.body)
        if e.get("kind") == "state" and e.get("state") in ("completed", "failed", "rejected"):
            done[e.get("task_id")] = (time.time(), e["state"])

    ch.basic_consume(q, callback=on_event, no_ack=True)
    task = json.load(open(os.environ["BENCH_TASK_FILE"]))
    props = {"content_type": "application/json", "delivery_mode": 2, "user_id": "fem-orchestrator"}

    def publish():
        tid = str(uuid.uuid4())
        task["task_id"] = tid
        ch.basic_publish(amqp.Message(json.dumps(task), **props), exchange="fem.tasks", routing_key="node.bench")
        return tid

    sent = {}
    if mode == "throughput":
        for _ in range(n):
            t = time.time()
            sent[publish()] = t
        deadline = time.time() + 900
        while len(done) < n and time.time() < deadline:
            try:
                conn.drain_events(timeout=1)
            except TimeoutError:
                pass
        span = max(t for t, _ in done.values()) - min(sent.values())
        bad = [s for _, s in done.values() if s != "completed"]
        if bad or len(done) < n:
            sys.exit(f"fem-client: {len(done)} of {n} finished, {len(bad)} not completed")
        summary("fem-client", mode, None, span, n)
    else:
        lat = []
        for _ in range(n):
            t = time.time()
            tid = publish()
            deadline = t + 60
            while tid not in done and time.time() < deadline:
                try:
                    conn.drain_events(timeout=1)
                except TimeoutError:
                    pass
            if done.get(tid, (0, ""))[1] != "completed":
                sys.exit(f"fem-client: task {tid} did not complete: {done.get(tid)}")
            lat.append(done[tid][0] - t)
        summary("fem-client", mode, lat, None, n)
    conn.close()


def celery(mode, n):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from celery_bench import app, noop
    with app.connection_for_write() as c:
        c.ensure_connection(max_retries=3)
    noop.delay().get(timeout=60)  # warm: the worker is up and the result queue exists
    if mode == "throughput":
        start = time.time()
        results = [noop.delay() for _ in range(n)]
        for r in results:
            r.get(timeout=900)
        summary("celery", mode, None, time.time() - start, n)
    else:
        lat = []
        for _ in range(n):
            t = time.time()
            noop.delay().get(timeout=60)
            lat.append(time.time() - t)
        summary("celery", mode, lat, None, n)


def fleet(_mode, n):
    """bench/fleet.sh: one task to `all`; prints the time from its publish to the last of n `completed` events."""
    import amqp
    conn, ch, q = events_queue("node.*.task.#")
    done, other = {}, {}

    def on_event(msg):
        e = json.loads(msg.body)
        if e.get("kind") == "state" and e.get("state") in ("completed", "failed", "rejected"):
            (done if e["state"] == "completed" else other)[e.get("node_id")] = time.time()

    ch.basic_consume(q, callback=on_event, no_ack=True)
    task = json.load(open(os.environ["BENCH_TASK_FILE"]))
    task["task_id"] = str(uuid.uuid4())
    props = {"content_type": "application/json", "delivery_mode": 2, "user_id": "fem-orchestrator"}
    t0 = time.time()
    ch.basic_publish(amqp.Message(json.dumps(task), **props), exchange="fem.tasks", routing_key="all")
    deadline = t0 + 300
    while len(done) + len(other) < n and time.time() < deadline:
        try:
            conn.drain_events(timeout=1)
        except TimeoutError:
            pass
    times = sorted(t - t0 for t in done.values())
    print(json.dumps({"side": "fleet", "n": n, "completed": len(done), "not_completed": len(other),
                      "first_s": times[0] if times else None, "median_s": statistics.median(times) if times else None,
                      "last_s": times[-1] if times else None}), flush=True)
    conn.close()


if __name__ == "__main__":
    side, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    {"fem": fem, "celery": celery, "fleet": fleet}[side](mode, n)
