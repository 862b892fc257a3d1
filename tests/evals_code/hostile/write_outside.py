# Tries to overwrite, delete and create files outside its working directory (paths from targets.json).
import json
import os
import shutil

targets = json.load(open("targets.json"))
outcomes = {}
for path in targets["overwrite"]:
    for attempt, action in (
        ("write", lambda p: open(p, "w").write("pwned")),
        ("append", lambda p: open(p, "a").write("pwned")),
        ("chmod", lambda p: os.chmod(p, 0o777)),
        ("truncate", lambda p: os.truncate(p, 0)),
        ("delete", os.remove),
    ):
        try:
            action(path)
            outcomes[f"{attempt} {path}"] = "DONE"
        except Exception as exc:
            outcomes[f"{attempt} {path}"] = type(exc).__name__
for path in targets["create"]:
    try:
        open(path, "w").write("pwned")
        outcomes[f"create {path}"] = "DONE"
    except Exception as exc:
        outcomes[f"create {path}"] = type(exc).__name__
for path in targets["rmtree"]:
    shutil.rmtree(path, ignore_errors=True)
for path in targets["list"]:
    try:
        outcomes[f"list {path}"] = sorted(os.listdir(path))[:5]
    except Exception as exc:
        outcomes[f"list {path}"] = type(exc).__name__
print(json.dumps(outcomes))
raise SystemExit(1)
