# Grows without bound; the address-space limit must stop it before the machine notices.
chunks = []
while True:
    chunks.append(bytearray(64 * 1024 * 1024))
