# Floods stdout and stderr.
import sys
line = "x" * 1023 + "\n"
for _ in range(200_000):
    sys.stdout.write(line)
    sys.stderr.write(line)
