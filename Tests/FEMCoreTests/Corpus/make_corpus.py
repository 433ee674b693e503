#!/usr/bin/env python3
"""Writes the validation corpus: one JSON file per case.

Each case: {"kind": "plan"|"task", "valid": bool, "schema_valid": bool, "paths": [...], "document": {...}}
- valid: the Swift validator accepts it; paths: the exact set of JSON paths it reports otherwise.
- schema_valid: what docs/templates/*.schema.json say. It differs from `valid` only for the checks a JSON
  Schema cannot express (listed in docs/templates/README.md under "Checks beyond the schema").
Run it again after changing the cases; the tests read only the JSON files.
"""
import copy, json, os

here = os.path.dirname(os.path.abspath(__file__))
for f in os.listdir(here):
    if f.endswith(".json"):
        os.remove(os.path.join(here, f))

P = {"schema_version": 1, "id": "t", "version": "1.0", "launcher": "process",
     "command": {"base": ["/bin/echo"], "args": [
         {"id": "name", "type": "str", "position": 1, "required": True},
         {"id": "n", "type": "int", "prefix": "-n", "default_value": 1},
         {"id": "x", "type": "float", "prefix": "--x=", "separate": False},
         {"id": "flag", "type": "bool", "prefix": "--flag"}]}}
T = {"schema_version": 1, "execution_id": "e1", "plan": P, "params": {"name": "a"}}
n = 0

def case(name, kind, doc, valid, paths=(), schema_valid=None):
    global n
    n += 1
    body = {"kind": kind, "valid": valid, "schema_valid": valid if schema_valid is None else schema_valid,
            "paths": sorted(paths), "document": doc}
    with open(os.path.join(here, f"{n:03d}-{name}.json"), "w") as f:
        json.dump(body, f, indent=1, ensure_ascii=False)
        f.write("\n")

def plan(**kw):
    p = copy.deepcopy(P)
    for k, v in kw.items():
        if v is None: p.pop(k, None)
        else: p[k] = v
    return p

def task(**kw):
    t = copy.deepcopy(T)
    for k, v in kw.items():
        if v is None: t.pop(k, None)
        else: t[k] = v
    return t

def with_args(*args):
    return plan(command={"base": ["/bin/echo"], "args": list(args)})

# --- valid plans
case("plan-minimal", "plan", plan(), True)
case("plan-docker", "plan", plan(launcher="docker", image="127.0.0.1:5000/x:1"), True)
case("plan-docker-digest", "plan", plan(launcher="docker", image="reg/x@sha256:" + "a" * 64, pull_policy="if-not-present"), True)
case("plan-git-source", "plan", plan(source={"git": {"url": "https://h/r.git", "commit": "b" * 40, "credentials": "gh"}}), True)
case("plan-files-source", "plan", plan(source={"files": [{"url": "http://h/f.py", "path": "lib/f.py", "sha256": "c" * 64}]}), True)
case("plan-placeholders", "plan", plan(command={"base": ["%%src%%/run", "--node=%%node_name%%", "%%dataset:d1%%", "100%"]},
                                     inputs=["d1"], env={"OUT": "%%out%%", "EMPTY": ""}), True)
case("plan-outputs-resources", "plan", plan(outputs=[{"pattern": "**/*.csv", "max_bytes": 10}, {"pattern": "a/b?.txt"}],
                                          resources={"cpus": 0.5, "memory_mb": 64, "gpus": 0, "storage_mb": 10},
                                          network="none", timeout_seconds=5), True)
case("plan-flower-supernode", "plan", plan(launcher="flower", flower={"mode": "supernode", "requirements": ["numpy"],
                                                                   "node_config": {"partition-id": 0, "p": "%%in%%", "b": True}}), True)
case("plan-flower-script", "plan", plan(launcher="flower", flower={"mode": "script", "entry": "client.py"}), True)
case("plan-description-empty", "plan", plan(description=""), True)
case("plan-arg-defaults-typed", "plan", with_args({"id": "f", "type": "float", "default_value": 2},
                                                 {"id": "b", "type": "bool", "default_value": True},
                                                 {"id": "p", "type": "file", "default_value": "data/x.csv"}), True)
# --- valid tasks
case("task-minimal", "task", task(), True)
case("task-full", "task", task(task_id="abc-1.2_x", params={"name": "a b; $(rm -rf /)", "n": 3, "x": 0.5, "flag": True},
                               timeout_seconds=30, stage_out={"url": "https://up/x", "credentials": "up", "token": "s3cr3t"}), True)
case("task-file-stageout", "task", task(stage_out={"url": "file:///tmp/out"}), True)
case("task-flower", "task", task(plan=plan(launcher="flower", flower={"mode": "supernode"}), params={"name": "a"},
                                 flower={"server": "127.0.0.1:9092", "insecure": True}), True)
case("task-float-given-int", "task", task(params={"name": "a", "x": 3}), True)
case("task-percent-in-value", "task", task(params={"name": "%%unknown%% is literal in a value"}), True)

# --- invalid plans (schema agrees)
case("plan-not-object", "plan", [1, 2], False, ["plan"])
case("plan-missing-fields", "plan", {"schema_version": 1}, False,
     ["plan.id", "plan.version", "plan.launcher", "plan.command"])
case("plan-schema-version-unknown", "plan", plan(schema_version=2), False, ["plan.schema_version"])
case("plan-schema-version-string", "plan", plan(schema_version="1"), False, ["plan.schema_version"])
case("plan-bad-id", "plan", plan(id="Has Spaces"), False, ["plan.id"])
case("plan-unknown-launcher", "plan", plan(launcher="kubernetes"), False, ["plan.launcher"])
case("plan-unknown-field", "plan", plan(imagee="x"), False, ["plan.imagee"])
case("plan-docker-without-image", "plan", plan(launcher="docker"), False, ["plan.image"])
case("plan-flower-without-section", "plan", plan(launcher="flower"), False, ["plan.flower"])
case("plan-flower-script-without-entry", "plan", plan(launcher="flower", flower={"mode": "script"}), False, ["plan.flower.entry"])
case("plan-arg-bad-type", "plan", with_args({"id": "a", "type": "str"}, {"id": "b", "type": "int"},
                                            {"id": "c", "type": "integr"}), False, ["plan.command.args[2].type"])
case("plan-arg-missing-id", "plan", with_args({"type": "str"}), False, ["plan.command.args[0].id"])
case("plan-arg-bad-position", "plan", with_args({"id": "a", "type": "str", "position": -1}), False, ["plan.command.args[0].position"])
case("plan-arg-separate-string", "plan", with_args({"id": "a", "type": "str", "separate": "yes"}), False, ["plan.command.args[0].separate"])
case("plan-base-empty", "plan", plan(command={"base": []}), False, ["plan.command.base"])
case("plan-base-string", "plan", plan(command={"base": "/bin/echo hi"}), False, ["plan.command.base"])
case("plan-unknown-placeholder", "plan", plan(command={"base": ["/bin/echo", "%%secret_key%%"]}), False, ["plan.command.base[1]"])
case("plan-unclosed-placeholder", "plan", plan(env={"A": "50%% done"}), False, ["plan.env.A"])
case("plan-env-reserved-name", "plan", plan(env={"FEM_TASK_ID": "x"}), False, ["plan.env.FEM_TASK_ID"])
case("plan-env-not-string", "plan", plan(env={"A": 1}), False, ["plan.env.A"])
case("plan-source-both", "plan", plan(source={"git": {"url": "u"}, "files": [{"url": "u", "path": "p"}]}), False, ["plan.source"])
case("plan-source-neither", "plan", plan(source={}), False, ["plan.source"])
case("plan-git-bad-commit", "plan", plan(source={"git": {"url": "u", "commit": "abc"}}), False, ["plan.source.git.commit"])
case("plan-file-traversal", "plan", plan(source={"files": [{"url": "u", "path": "../../etc/passwd"}]}), False, ["plan.source.files[0].path"])
case("plan-file-absolute", "plan", plan(source={"files": [{"url": "u", "path": "/etc/passwd"}]}), False, ["plan.source.files[0].path"])
case("plan-file-bad-sha", "plan", plan(source={"files": [{"url": "u", "path": "a", "sha256": "XYZ"}]}), False, ["plan.source.files[0].sha256"])
case("plan-output-absolute", "plan", plan(outputs=[{"pattern": "/etc/*"}]), False, ["plan.outputs[0].pattern"])
case("plan-output-dotdot", "plan", plan(outputs=[{"pattern": "../x"}]), False, ["plan.outputs[0].pattern"])
case("plan-resources-bad", "plan", plan(resources={"cpus": 0, "memory_mb": 1.5, "gpus": -1, "disk": 1}), False,
     ["plan.resources.cpus", "plan.resources.memory_mb", "plan.resources.gpus", "plan.resources.disk"])
case("plan-timeout-zero", "plan", plan(timeout_seconds=0), False, ["plan.timeout_seconds"])
case("plan-network-bridge", "plan", plan(network="bridge"), False, ["plan.network"])
case("plan-inputs-duplicate", "plan", plan(inputs=["a", "a"]), False, ["plan.inputs[1]"])
case("plan-many-errors", "plan", {"schema_version": 1, "id": "ok", "version": "", "launcher": "process",
                                  "command": {"base": [""], "args": [{"id": "1bad", "type": "str"}]}, "extra": 1},
     False, ["plan.version", "plan.command.base[0]", "plan.command.args[0].id", "plan.extra"])
# --- invalid plans, beyond the schema (schema accepts)
case("plan-duplicate-arg-ids", "plan", with_args({"id": "a", "type": "str"}, {"id": "a", "type": "int"}), False,
     ["plan.command.args[1].id"], schema_valid=True)
case("plan-default-wrong-type", "plan", with_args({"id": "a", "type": "int", "default_value": "ten"}), False,
     ["plan.command.args[0].default_value"], schema_valid=True)
case("plan-dataset-not-declared", "plan", plan(command={"base": ["/bin/cat", "%%dataset:d9%%"]}), False,
     ["plan.command.base[1]"], schema_valid=True)
# --- invalid tasks (schema agrees)
case("task-missing-execution", "task", task(execution_id=None), False, ["execution_id"])
case("task-bad-task-id", "task", task(task_id="../etc"), False, ["task_id"])
case("task-unknown-field", "task", task(urgency=1), False, ["urgency"])
case("task-params-not-object", "task", task(params=[1]), False, ["params"])
case("task-bad-timeout", "task", task(timeout_seconds="60"), False, ["timeout_seconds"])
case("task-stage-out-ftp", "task", task(stage_out={"url": "ftp://x"}), False, ["stage_out.url"])
case("task-flower-missing", "task", task(plan=plan(launcher="flower", flower={"mode": "supernode"})), False, ["flower"])
case("task-plan-invalid", "task", task(plan=plan(launcher="lsf")), False, ["plan.launcher"])
case("task-schema-version-unknown", "task", task(schema_version=7), False, ["schema_version"])
# --- invalid tasks, beyond the schema (parameters against the plan's arguments)
case("task-int-given-string", "task", task(params={"name": "a", "n": "ten"}), False, ["params.n"], schema_valid=True)
case("task-unknown-param", "task", task(params={"name": "a", "colour": "red"}), False, ["params.colour"], schema_valid=True)
case("task-missing-required", "task", task(params={}), False, ["params.name"], schema_valid=True)
case("task-bool-given-string", "task", task(params={"name": "a", "flag": "true"}), False, ["params.flag"], schema_valid=True)
case("task-str-given-number", "task", task(params={"name": 5}), False, ["params.name"], schema_valid=True)
# --- constraints: a string (its syntax is checked on the node, which declines a task it cannot read)
case("task-plan-constraints", "task", task(plan=plan(constraints='cpus >= 1 and gpu_model =~ "A100"'),
                                           constraints='"camera" in labels.sensors'), True)
case("task-constraints-not-a-string", "task", task(plan=plan(constraints=""), constraints=3), False,
     ["constraints", "plan.constraints"])
# --- signature: well-formed only here (the node's [trust] verifies it)
SIG = {"algorithm": "ed25519", "key_id": "0123456789abcdef", "value": "A" * 86 + "==", "signer": "Alice"}
case("plan-signed", "plan", plan(signature=SIG), True)
case("plan-signature-malformed", "plan", plan(signature={"algorithm": "rsa", "key_id": "0123", "value": "AAAA",
                                                          "extra": 1}), False,
     ["plan.signature.algorithm", "plan.signature.key_id", "plan.signature.value", "plan.signature.extra"])
case("task-alternative-signature-missing-value", "task", task(alternatives=[plan(signature={"algorithm": "ed25519",
                                                                                            "key_id": "0123456789abcdef"})]),
     False, ["alternatives[0].signature.value"])
print(f"wrote {n} cases")
