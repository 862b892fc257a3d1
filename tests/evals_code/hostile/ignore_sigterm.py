# Ignores SIGTERM (and SIGINT/SIGHUP) in itself and in a child, then spins.
import os
import signal

for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
print(os.readlink("/proc/self/ns/pid"), flush=True)
os.fork()
while True:
    pass
