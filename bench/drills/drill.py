#!/usr/bin/env python3
"""Fault drills, run as an operator would run them: each drill starts a TLS RabbitMQ of its own (scripts/dev-broker.sh,
a private port) and a real fem-client daemon, sends real tasks with femctl, does the fault, and prints PASS or FAIL
with its counts. The events are read from a durable queue (`femctl watch --queue`), so a stopped watcher loses
nothing; each task writes one line into a marker file named after its id, so a task that ran twice is seen.

    python3 bench/drills/drill.py [--bin DIR] [broker-restart|sigkill|broker-down|consumer-stopped|disk-full|all]

The binaries default to .build/release (bash install.sh builds them). Run as root (the node's host tasks run as the
fem-task user, which install.sh creates; the disk drill mounts small tmpfs folders and unmounts them).
"""
import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TERMINAL = {"completed", "failed", "cancelled", "declined", "rejected"}


class DrillError(Exception):
    pass


class Drill:
    def __init__(self, name, port, bin_dir, extra_config=""):
        self.name, self.port, self.bin = name, port, bin_dir
        self.node = f"drill-{name}"
        self.work = os.path.join(ROOT, ".build-bench", "drills", name)
        if os.path.isdir(self.work):
            subprocess.run(["bash", f"{ROOT}/scripts/dev-broker.sh", "stop", "--dir", f"{self.work}/broker"],
                           capture_output=True)
            shutil.rmtree(self.work)
        os.makedirs(self.work)
        self.markers = f"{self.work}/markers"
        os.makedirs(self.markers)
        os.chmod(self.markers, 0o1777)
        self.broker_dir = f"{self.work}/broker"
        self.log = f"{self.work}/receiver.log"
        self.var = f"{self.work}/var"
        self.extra_config = extra_config
        self.daemon = None
        self.watch = None
        self.events_path = f"{self.work}/events.jsonl"
        self.kills = 0

    # --- services
    def broker(self, command):
        r = subprocess.run(["bash", f"{ROOT}/scripts/dev-broker.sh", command, "--dir", self.broker_dir,
                            "--port", str(self.port), "--name", f"fem-drill-{self.name}"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise DrillError(f"dev-broker.sh {command}: {r.stdout}{r.stderr}")
        if command == "start":
            # The node's own least-privilege account, and the shared exchanges (nodes only look them up).
            r = subprocess.run(["bash", f"{ROOT}/scripts/dev-broker.sh", "add-node", self.node, "--dir",
                                self.broker_dir], capture_output=True, text=True)
            if r.returncode != 0:
                raise DrillError(f"dev-broker.sh add-node: {r.stdout}{r.stderr}")
            r = subprocess.run([f"{self.bin}/femctl", "setup"], capture_output=True, text=True, env=self.femctl_env())
            if r.returncode != 0:
                raise DrillError(f"femctl setup: {r.stdout}{r.stderr}")

    def write_config(self):
        b = self.broker_dir
        with open(f"{self.work}/node.toml", "w") as f:
            f.write(f"""[node]
id = "{self.node}"
work_dir = "{self.var}"
log_file = "{self.log}"
max_concurrent_tasks = 2
heartbeat_interval = 2
stop_grace = 1
[broker]
url = "amqps://{self.node}@localhost:{self.port}/%2f"
password_file = "{b}/nodes/{self.node}.password"
ca_file = "{b}/ca.pem"
cert_file = "{b}/node.pem"
key_file = "{b}/node.key"
prefetch = 16
[launchers]
enabled = ["process"]
[launchers.process]
allowed_executables = ["/bin/sh"]
{self.extra_config}
""")

    def femctl_env(self):
        b = self.broker_dir
        env = dict(os.environ)
        env.update(FEMCTL_BROKER_URL=f"amqps://fem-orchestrator@localhost:{self.port}/%2f", FEMCTL_CA_FILE=f"{b}/ca.pem",
                   FEMCTL_CERT_FILE=f"{b}/operator.pem", FEMCTL_KEY_FILE=f"{b}/operator.key",
                   FEMCTL_PASSWORD_FILE=f"{b}/orchestrator.password")
        return env

    def start_daemon(self, wait_connected=True):
        out = open(f"{self.work}/daemon.out", "a")
        self.daemon = subprocess.Popen([f"{self.bin}/fem-client", "daemon", "--config", f"{self.work}/node.toml"],
                                       stdout=out, stderr=out, start_new_session=True)
        if wait_connected:
            self.wait_for_log("connected to the broker", 60)

    def log_count(self, text):
        try:
            with open(self.log, errors="replace") as f:
                return f.read().count(text)
        except FileNotFoundError:
            return 0

    def wait_for_log(self, text, timeout, at_least=1):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.log_count(text) >= at_least:
                return
            if self.daemon and self.daemon.poll() is not None:
                raise DrillError(f"the daemon exited ({self.daemon.returncode}); see {self.work}/daemon.out")
            time.sleep(0.1)
        raise DrillError(f"'{text}' not in receiver.log after {timeout} s")

    def kill_daemon(self, sig=signal.SIGKILL):
        if self.daemon and self.daemon.poll() is None:
            self.daemon.send_signal(sig)
            self.daemon.wait(60)
        self.daemon = None

    def start_watch(self):
        out = open(self.events_path, "a")
        err = open(f"{self.work}/watch.err", "a")
        self.watch = subprocess.Popen([f"{self.bin}/femctl", "watch", "--json", "--queue", f"femctl.drill.{self.name}",
                                       "--node", self.node], stdout=out, stderr=err, env=self.femctl_env())
        time.sleep(1.0)  # the queue is durable: events published before the watcher binds are kept once it exists
        if self.watch.poll() is not None:
            with open(f"{self.work}/watch.err") as f:
                raise DrillError(f"femctl watch exited: {f.read()[-500:]}")

    def stop_watch(self):
        if self.watch and self.watch.poll() is None:
            self.watch.terminate()
            self.watch.wait(30)
        self.watch = None

    def up(self):
        """Broker, node config, daemon (connected) and the durable event watcher."""
        self.broker("start")
        self.write_config()
        self.start_daemon()
        self.start_watch()

    def stop_all(self):
        self.stop_watch()
        self.kill_daemon(signal.SIGTERM)
        try:
            self.broker("stop")
        except DrillError:
            pass

    # --- tasks
    def task_file(self, seconds, task_id=None):
        doc = {"schema_version": 1, "execution_id": f"drill-{self.name}",
               "plan": {"schema_version": 1, "id": "drill", "version": "1", "launcher": "process",
                        "command": {"base": ["/bin/sh", "-c",
                                             f'echo ran >> {self.markers}/"$FEM_TASK_ID"; sleep {seconds}']}}}
        if task_id:
            doc["task_id"] = task_id
        path = f"{self.work}/task-{seconds}-{task_id or 'new'}.json"
        with open(path, "w") as f:
            json.dump(doc, f)
        return path

    def submit(self, seconds=0, count=1, task_id=None, attempts=30):
        for _ in range(attempts):
            r = subprocess.run([f"{self.bin}/femctl", "submit", self.task_file(seconds, task_id), "--node", self.node,
                                "--count", str(count)], capture_output=True, text=True, env=self.femctl_env())
            if r.returncode == 0:
                return r.stdout.split()
            time.sleep(1)
        raise DrillError(f"femctl submit failed: {r.stderr}")

    def events(self):
        out = []
        try:
            with open(self.events_path) as f:
                for line in f:
                    line = line.strip()
                    if line.startswith("{"):
                        try:
                            out.append(json.loads(line))
                        except ValueError:
                            pass
        except FileNotFoundError:
            pass
        return out

    def terminal_events(self):
        by_id = {}
        for e in self.events():
            if e.get("kind") == "state" and e.get("state") in TERMINAL:
                by_id.setdefault(e["task_id"], []).append(e)
        return by_id

    def wait_terminal(self, ids, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            done = self.terminal_events()
            if all(i in done for i in ids):
                return done
            time.sleep(0.5)
        done = self.terminal_events()
        missing = [i for i in ids if i not in done]
        raise DrillError(f"{len(missing)} of {len(ids)} tasks have no terminal event after {timeout} s "
                         f"(first: {missing[:3]})")

    def runs(self, task_id):
        try:
            with open(f"{self.markers}/{task_id}") as f:
                return len(f.read().splitlines())
        except FileNotFoundError:
            return 0

    def verdict(self, ids, duplicates=0, extra=None, allowed_failures=("node_restart",)):
        """Every task: exactly one terminal event; ran at most once (a completed one exactly once); failures only of
        the allowed classes; the journal's integrity check ok."""
        # Events are published after they are journaled: give the outbox a moment to drain what is left.
        done = self.wait_terminal(ids, 300)
        time.sleep(2)
        done = self.terminal_events()
        states = {}
        problems = []
        for i in ids:
            evs = done.get(i, [])
            seqs = {e.get("seq") for e in evs}
            if len(seqs) != 1:
                problems.append(f"{i}: {len(seqs)} distinct terminal events")
                continue
            e = evs[0]
            states[e["state"]] = states.get(e["state"], 0) + 1
            runs = self.runs(i)
            if runs > 1:
                problems.append(f"{i}: ran {runs} times")
            if e["state"] == "completed" and runs != 1:
                problems.append(f"{i}: completed but ran {runs} times")
            if e["state"] == "failed":
                fc = (e.get("detail") or {}).get("failure_class")
                if fc not in allowed_failures:
                    problems.append(f"{i}: failed with {fc}: {(e.get('detail') or {}).get('message')}")
        dup_events = sum(1 for e in self.events() if e.get("kind") == "duplicate")
        integrity = "?"
        try:
            integrity = sqlite3.connect(f"file:{self.var}/journal.sqlite?mode=ro", uri=True) \
                .execute("PRAGMA integrity_check").fetchone()[0]
        except sqlite3.Error as e:
            integrity = f"error: {e}"
        if integrity != "ok":
            problems.append(f"journal integrity_check: {integrity}")
        if duplicates and dup_events < duplicates:
            problems.append(f"{duplicates} duplicate deliveries sent, {dup_events} duplicate events")
        ran_twice = sum(1 for i in ids if self.runs(i) > 1)
        counts = (f"{len(ids)} tasks, " + ", ".join(f"{v} {k}" for k, v in sorted(states.items()))
                  + f"; {duplicates} duplicates sent, {dup_events} duplicate events; ran twice: {ran_twice}; "
                  + f"SIGKILLs: {self.kills}; integrity_check: {integrity}" + (f"; {extra}" if extra else ""))
        if problems:
            print(f"FAIL {self.name}: {counts}")
            for p in problems[:20]:
                print(f"  - {p}")
            return False
        print(f"PASS {self.name}: {counts}")
        return True


# --- the drills

def broker_restart(bin_dir):
    """1000 deliveries, 10% of them duplicate ids, the broker restarted twice while they flow."""
    d = Drill("broker-restart", 5681, bin_dir)
    try:
        d.up()
        ids = d.submit(count=450)
        dups = random.sample(ids, 50)
        for i in dups:
            d.submit(task_id=i)
        d.stop_watch()
        d.broker("stop")
        time.sleep(3)
        d.broker("start")
        d.start_watch()
        more = d.submit(count=450)
        ids += more
        d.stop_watch()
        d.broker("stop")
        time.sleep(3)
        d.broker("start")
        d.start_watch()
        dups2 = random.sample(more, 50)
        for i in dups2:
            d.submit(task_id=i)
        return d.verdict(ids, duplicates=100, allowed_failures=())
    finally:
        d.stop_all()


def sigkill(bin_dir):
    """20 SIGKILLs of the daemon under a stream of short and long tasks."""
    d = Drill("sigkill", 5682, bin_dir)
    try:
        d.up()
        ids = []
        for round_ in range(20):
            ids += d.submit(seconds=0, count=6)
            ids += d.submit(seconds=3, count=2)
            time.sleep(random.uniform(0.5, 2.0))
            d.kill_daemon(signal.SIGKILL)
            d.kills += 1
            d.start_daemon(wait_connected=False)
            d.wait_for_log("connected to the broker", 60, at_least=round_ + 2)
        return d.verdict(ids)
    finally:
        d.stop_all()


def broker_down(bin_dir):
    """The daemon starts while its broker is down, and connects once it is up."""
    d = Drill("broker-down", 5683, bin_dir)
    try:
        d.broker("start")   # makes the certificates
        d.broker("stop")
        d.write_config()
        d.start_daemon(wait_connected=False)
        time.sleep(10)
        if d.daemon.poll() is not None:
            raise DrillError("the daemon exited while the broker was down")
        d.broker("start")
        d.wait_for_log("connected to the broker", 120)
        d.start_watch()
        ids = d.submit(count=100)
        return d.verdict(ids, allowed_failures=())
    finally:
        d.stop_all()


def consumer_stopped(bin_dir):
    """The orchestrator's event consumer is away for 60 s while 200 tasks run."""
    d = Drill("consumer-stopped", 5684, bin_dir)
    try:
        d.up()
        d.stop_watch()
        ids = d.submit(count=200)
        d.wait_for_log("completed", 120, at_least=200)
        time.sleep(60)
        d.start_watch()
        return d.verdict(ids, allowed_failures=())
    finally:
        d.stop_all()


DRILLS = {"broker-restart": broker_restart, "sigkill": sigkill, "broker-down": broker_down,
          "consumer-stopped": consumer_stopped}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=f"{ROOT}/.build/release")
    p.add_argument("drills", nargs="*", default=["all"])
    a = p.parse_args()
    names = list(DRILLS) if a.drills == ["all"] else a.drills
    ok = True
    for n in names:
        if n not in DRILLS:
            print(f"unknown drill {n}; one of {', '.join(DRILLS)}")
            return 2
        try:
            ok = DRILLS[n](a.bin) and ok
        except DrillError as e:
            print(f"FAIL {n}: {e}")
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
