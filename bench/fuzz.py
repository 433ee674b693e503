#!/usr/bin/env python3
"""Fuzz run through the real daemon: N generated task messages (default 10,000: mutations of a valid task, deep
nesting, huge strings, invalid UTF-8, wrong types, truncations, control characters) published raw to a node's queue
on a TLS RabbitMQ of the run's own, while a long task is cancelled in the middle of the flood. Prints how many
messages were answered (admitted, rejected or duplicate, each with its reason), whether the daemon crashed, its idle
and peak RSS, and how long the cancel took; PASS when every message was answered, nothing crashed, RSS stayed under
twice its idle value and the cancel was answered within 1 s.

    python3 bench/fuzz.py [--bin DIR] [N]
"""
import argparse
import json
import os
import random
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "drills"))
from drill import Drill, DrillError, ROOT  # noqa: E402


def valid_task(rng, n):
    return {"schema_version": 1, "task_id": f"fz-{n:06d}", "execution_id": "fuzz",
            "plan": {"schema_version": 1, "id": "fuzz", "version": "1", "launcher": "process",
                     "command": {"base": ["/bin/sh", "-c", "true"]}}}


def nested(depth, kind):
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def mutate(rng, n):
    """One message body (bytes) and what it is."""
    t = valid_task(rng, n)
    r = rng.random()
    if r < 0.08:
        return json.dumps(t).encode(), "valid"
    if r < 0.20:  # a field removed or given the wrong type
        path = rng.choice([("task_id",), ("execution_id",), ("schema_version",), ("plan",), ("plan", "id"),
                           ("plan", "launcher"), ("plan", "command"), ("plan", "command", "base")])
        obj = t
        for k in path[:-1]:
            obj = obj[k]
        if rng.random() < 0.5:
            obj.pop(path[-1], None)
        else:
            obj[path[-1]] = rng.choice([None, 0, -1, 2**63, 1.5, True, "", "x" * 300, [], {}, [1, "a", None]])
        return json.dumps(t).encode(), "wrong-type"
    if r < 0.32:  # deep nesting, in the document or inside a field
        depth = rng.choice([65, 100, 1000, 10000, 30000])
        kind = rng.choice(["array", "object"])
        if rng.random() < 0.5:
            return nested(depth, kind), "deep"
        body = json.dumps(t).encode()
        return body[:-1] + b', "extra": ' + nested(depth, kind) + b"}", "deep-field"
    if r < 0.40:  # huge strings
        size = rng.choice([10_000, 100_000, 900_000, 1_500_000])
        t["plan"]["description"] = "A" * size
        return json.dumps(t).encode(), "huge"
    if r < 0.52:  # invalid UTF-8 bytes in the text
        body = bytearray(json.dumps(t).encode())
        for _ in range(rng.randint(1, 4)):
            body.insert(rng.randrange(len(body)), rng.choice([0x80, 0xC0, 0xFF, 0xED, 0xF5]))
        return bytes(body), "utf8"
    if r < 0.64:  # truncated or with flipped bytes
        body = bytearray(json.dumps(t).encode())
        if rng.random() < 0.5:
            return bytes(body[:rng.randrange(len(body))]), "truncated"
        for _ in range(rng.randint(1, 8)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        return bytes(body), "flipped"
    if r < 0.76:  # control characters, escapes and look-alike ids
        t["task_id"] = rng.choice([f"fz-{n:06d}\n", f"fz-{n:06d}\u0000", f"\u001b[2Jfz-{n:06d}", f"fz-{n:06d}\u2028",
                                   f"../fz-{n:06d}", "x" * 5000, f"fz-{n:06d}/x"])
        return json.dumps(t).encode(), "ids"
    if r < 0.84:  # not a task at all
        return rng.choice([b"", b"null", b"[]", b"42", b'"task"', b"{}", b"\x00" * 100, os.urandom(200)]), "other"
    if r < 0.92:  # unknown launcher, bad plan contents
        t["plan"]["launcher"] = rng.choice(["docker", "nope", "PROCESS", "flower"])
        t["plan"]["env"] = {rng.choice(["LD_PRELOAD", "PATH", "A B", "FEM_X", "OK"]): "v"}
        return json.dumps(t).encode(), "policy"
    # duplicated keys and numbers out of range
    body = json.dumps(t).encode()
    return body[:-1] + b', "task_id": "dup", "schema_version": 1e999}', "odd"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=f"{ROOT}/.build/release")
    p.add_argument("n", nargs="?", type=int, default=10000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--only", help="generate only these kinds (comma-separated), to find what costs memory")
    a = p.parse_args()
    rng = random.Random(a.seed)
    d = Drill("fuzz", 5685, a.bin, extra_config="")
    kinds = {}
    try:
        d.up()
        time.sleep(2)
        pid = d.daemon.pid
        rss = lambda: int(next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:")))
        idle = rss()
        peak = [idle]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], rss())
                except (OSError, StopIteration):
                    return
                time.sleep(0.1)
        threading.Thread(target=sample, daemon=True).start()

        path = f"{d.work}/messages.bin"
        with open(path, "wb") as f:
            only = set(a.only.split(",")) if a.only else None
            i = 0
            while i < a.n:
                body, kind = mutate(rng, i + (0 if only is None else rng.randrange(10**6)))
                if only is not None and kind not in only:
                    continue
                i += 1
                kinds[kind] = kinds.get(kind, 0) + 1
                f.write(struct.pack(">I", len(body)) + body)
        # A long task to cancel while the flood is being read.
        long_id = d.submit(seconds=60)[0]
        d.wait_for_log(f"task={long_id} running", 60)
        flood = subprocess.Popen([f"{a.bin}/fem-bench", "publish", d.broker_dir, str(d.port), d.node, path],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(3)
        subprocess.run([f"{a.bin}/femctl", "cancel", long_id, "--node", d.node, "--reason", "fuzz"], check=True,
                       env=d.femctl_env(), capture_output=True)
        t0 = time.time()  # femctl returns once the broker confirmed the cancel: from here it is the node's time
        cancel_s = None
        while time.time() - t0 < 30:
            if any(e.get("task_id") == long_id and e.get("state") == "cancelled" for e in d.events()):
                cancel_s = time.time() - t0
                break
            time.sleep(0.05)
        out, _ = flood.communicate(timeout=1800)
        if flood.returncode != 0:
            raise DrillError(f"fem-bench publish: {out}")
        # Every message answered: admitted (received), rejected, or a duplicate of an earlier id.
        deadline = time.time() + 600
        while time.time() < deadline:
            evs = d.events()
            answers = sum(1 for e in evs if e.get("task_id") != long_id and (
                e.get("kind") == "duplicate" or (e.get("kind") == "state" and e.get("state") in ("received", "rejected"))))
            if answers >= a.n:
                break
            time.sleep(1)
        stop.set()
        evs = d.events()
        by = {}
        for e in evs:
            if e.get("task_id") == long_id:
                continue
            k = e.get("kind") if e.get("kind") == "duplicate" else e.get("state")
            if k in ("received", "rejected", "duplicate"):
                by[k] = by.get(k, 0) + 1
        reasonless = sum(1 for e in evs if e.get("state") == "rejected" and not (e.get("detail") or {}).get("message"))
        answers = sum(by.values())
        alive = d.daemon.poll() is None
        crashes = 0 if alive else 1
        crash_log = d.log_count("Fatal error")
        print(f"messages            {a.n} ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))})")
        print(f"answered            {answers} ({', '.join(f'{v} {k}' for k, v in sorted(by.items()))}); "
              f"rejections without a reason: {reasonless}")
        print(f"crashes             {crashes} (daemon {'alive' if alive else 'gone'}; 'Fatal error' lines: {crash_log})")
        print(f"daemon RSS          idle {idle / 1024:.1f} MiB, peak {peak[0] / 1024:.1f} MiB "
              f"({peak[0] / idle:.2f}x idle)")
        print(f"cancel during flood {'%.0f ms' % (cancel_s * 1000) if cancel_s is not None else 'not answered in 30 s'}")
        ok = (answers == a.n and reasonless == 0 and crashes == 0 and crash_log == 0 and peak[0] <= 2 * idle
              and cancel_s is not None and cancel_s <= 1.0)
        print(("PASS" if ok else "FAIL") + f" fuzz: {answers}/{a.n} answered, {crashes} crashes, "
              f"peak RSS {peak[0] / idle:.2f}x idle, cancel {cancel_s if cancel_s is None else round(cancel_s, 3)} s")
        return 0 if ok else 1
    except DrillError as e:
        print(f"FAIL fuzz: {e}")
        return 1
    finally:
        d.stop_all()


if __name__ == "__main__":
    sys.exit(main())
