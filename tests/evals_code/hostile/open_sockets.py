# Tries to reach the test's TCP server, its abstract unix socket, an outside address, and to listen.
import json
import socket

targets = json.load(open("targets.json"))
outcomes = {}
for host in targets["hosts"]:
    try:
        socket.create_connection((host, targets["port"]), timeout=2).sendall(b"escaped")
        outcomes[f"tcp {host}"] = "CONNECTED"
    except Exception as exc:
        outcomes[f"tcp {host}"] = type(exc).__name__
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect("\0" + targets["abstract"])
    s.sendall(b"escaped")
    outcomes["unix"] = "CONNECTED"
except Exception as exc:
    outcomes["unix"] = type(exc).__name__
try:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"escaped", (targets["hosts"][0], targets["port"]))
    outcomes["udp"] = "SENT"
except Exception as exc:
    outcomes["udp"] = type(exc).__name__
try:
    socket.create_connection(("1.1.1.1", 53), timeout=2)
    outcomes["internet"] = "CONNECTED"
except Exception as exc:
    outcomes["internet"] = type(exc).__name__
print(json.dumps(outcomes))
raise SystemExit(1)
