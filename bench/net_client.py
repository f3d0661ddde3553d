#!/usr/bin/env python3
"""bench/net's client: measures guests' networks through forwarded host ports, side by side.

    net_client.py BYTES REPS CONNECTS NAME:ECHO_PORT:IN_PORT:OUT_PORT [NAME:...]...

For each guest, through its three ports: "throughput in" = BYTES written to IN_PORT until the
guest has read them all (its nc closes at EOF); "out" = BYTES read from OUT_PORT; "connect" =
connect() plus a one-byte echo on ECHO_PORT, the time until a connection does work end to end.
The guests take turns, one repetition or one connection each, so that drift in a noisy machine
(the nested harness) falls on all of them alike. Prints "RESULT NAME KIND VALUE" lines (MiB/s,
or ms for connect).
"""
import socket
import sys
import time


def connect(port, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def echo_once(port):
    s = connect(port)
    s.sendall(b"x")
    if s.recv(1) != b"x":
        raise SystemExit("echo failed")
    s.close()


def throughput_in(port, nbytes):
    buf = b"\0" * (1 << 20)
    s = connect(port)
    t0 = time.monotonic()
    left = nbytes
    while left > 0:
        left -= s.send(buf[: min(left, len(buf))])
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    dt = time.monotonic() - t0
    s.close()
    return nbytes / dt / (1 << 20)


def throughput_out(port, nbytes):
    s = connect(port)
    t0 = time.monotonic()
    got = 0
    while got < nbytes:
        b = s.recv(1 << 20)
        if not b:
            raise SystemExit("out: the guest closed after %d of %d bytes" % (got, nbytes))
        got += len(b)
    dt = time.monotonic() - t0
    s.close()
    return nbytes / dt / (1 << 20)


def wait_ready(name, echo):
    # The guest's servers may still be starting: wait until the echo answers.
    deadline = time.monotonic() + 120
    while True:
        try:
            echo_once(echo)
            return
        except (OSError, SystemExit):
            if time.monotonic() > deadline:
                raise SystemExit("%s: the guest's echo server never answered" % name)
            time.sleep(0.2)


def main():
    nbytes, reps, conns = (int(a) for a in sys.argv[1:4])
    guests = []
    for spec in sys.argv[4:]:
        name, e, i, o = spec.split(":")
        guests.append((name, int(e), int(i), int(o)))
    for name, e, i, o in guests:
        wait_ready(name, e)
        throughput_in(i, 1 << 20)  # warm up both paths
        throughput_out(o, nbytes)
    for _ in range(reps):
        for name, e, i, o in guests:
            print("RESULT %s in %.2f" % (name, throughput_in(i, nbytes)), flush=True)
            print("RESULT %s out %.2f" % (name, throughput_out(o, nbytes)), flush=True)
    for _ in range(conns):
        for name, e, i, o in guests:
            t0 = time.monotonic()
            echo_once(e)
            print("RESULT %s connect %.3f" % (name, (time.monotonic() - t0) * 1000), flush=True)


main()
