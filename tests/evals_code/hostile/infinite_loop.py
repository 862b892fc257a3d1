# Burns CPU forever: the wall-clock (or CPU-time) limit must stop it.
while True:
    pass
