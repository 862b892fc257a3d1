# Daemonises (fork, setsid, fork), then the grandchild sleeps under a recognisable name and writes a marker
# into every world-writable host folder it was told about. The parent exits 0 at once.
import json
import os

targets = json.load(open("targets.json"))
print(os.readlink("/proc/self/ns/pid"), flush=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for fd in (0, 1, 2):
            os.close(fd)
        pid = os.fork()
        if pid == 0:
            os.execv("/bin/sleep", ["sleep", targets["sleep"]])
        import time
        time.sleep(float(targets["delay"]))
        for folder in targets["marker_dirs"]:
            try:
                open(os.path.join(folder, "survivor-marker"), "w").write("alive")
            except OSError:
                pass
        os._exit(0)
    os._exit(0)
os._exit(0)
