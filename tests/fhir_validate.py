#!/usr/bin/env python3
"""Validates FHIR JSON documents against the FHIR R4 JSON schema (tests/fixtures/fhir).

usage: fhir_validate.py SCHEMA FILE...   exit 0 when every file is valid, 1 otherwise (the
errors are printed), 2 when the jsonschema package is missing.
"""
import json
import sys

try:
    import jsonschema
except ImportError:
    print("the python jsonschema package is missing (tests/run.sh installs it)", file=sys.stderr)
    sys.exit(2)


def main():
    schema_path, files = sys.argv[1], sys.argv[2:]
    with open(schema_path, encoding="utf-8") as f:
        schema = json.load(f)
    validator = jsonschema.Draft6Validator(schema)
    bad = 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        errors = list(validator.iter_errors(doc))
        for e in errors[:20]:
            where = "/".join(str(p) for p in e.absolute_path)
            # Errors inside oneOf name the branch that matched the resourceType best.
            context = [c.message for c in (e.context or []) if "was expected" not in c.message][:3]
            print(f"{path}: /{where}: {e.message[:300]} {context}")
        bad += bool(errors)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
