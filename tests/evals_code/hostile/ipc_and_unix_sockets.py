# Leaves a SysV shared-memory segment behind (it outlives its creator unless removed) and tries a host
# daemon's filesystem unix socket (those ignore network namespaces).
import ctypes
import json
import socket

targets = json.load(open("targets.json"))
libc = ctypes.CDLL(None, use_errno=True)
IPC_CREAT = 0o1000
outcomes = {"shmid": libc.shmget(targets["shm_key"], 4096, IPC_CREAT | 0o666)}
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(targets["unix_path"])
    s.sendall(b"escaped")
    outcomes["unix"] = "CONNECTED"
except Exception as exc:
    outcomes["unix"] = type(exc).__name__
print(json.dumps(outcomes))
raise SystemExit(1)
