#!/usr/bin/env python3
"""Validates every corpus document against docs/templates/*.schema.json with Python's jsonschema and prints
one JSON line per case: {"file": ..., "schema_valid": bool}. The Swift test compares it with the corpus."""
import json, os, sys
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

templates, corpus = sys.argv[1], sys.argv[2]
plan = json.load(open(os.path.join(templates, "tool-plan.schema.json")))
task = json.load(open(os.path.join(templates, "task.schema.json")))
Draft202012Validator.check_schema(plan)
Draft202012Validator.check_schema(task)
registry = Registry().with_resources([(plan["$id"], Resource.from_contents(plan)), (task["$id"], Resource.from_contents(task))])
validators = {"plan": Draft202012Validator(plan, registry=registry), "task": Draft202012Validator(task, registry=registry)}
for name in sorted(os.listdir(corpus)):
    if not name.endswith(".json"):
        continue
    case = json.load(open(os.path.join(corpus, name)))
    ok = validators[case["kind"]].is_valid(case["document"])
    print(json.dumps({"file": name, "schema_valid": ok}))
