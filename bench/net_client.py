#!/usr/bin/env python3
"""bench/net's client: measures one guest's network through three forwarded host ports.

    net_client.py ECHO_PORT IN_PORT OUT_PORT BYTES REPS CONNECTS

Prints "RESULT in MiB/s", "RESULT out MiB/s" per repetition and "RESULT connect ms" per
connection: throughput in = BYTES written to IN_PORT until the guest has read them all (its nc
closes at EOF); out = BYTES read from OUT_PORT; connect = connect() plus a one-byte echo on
ECHO_PORT, the time until a connection does work end to end.
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


def main():
    echo, pin, pout, nbytes, reps, conns = (int(a) for a in sys.argv[1:7])
    # The guest's servers may still be starting: wait until the echo answers.
    deadline = time.monotonic() + 120
    while True:
        try:
            echo_once(echo)
            break
        except (OSError, SystemExit):
            if time.monotonic() > deadline:
                raise SystemExit("the guest's echo server never answered")
            time.sleep(0.2)
    throughput_in(pin, 1 << 20)  # warm up both paths
    throughput_out(pout, nbytes)
    for _ in range(reps):
        print("RESULT in %.2f" % throughput_in(pin, nbytes), flush=True)
        print("RESULT out %.2f" % throughput_out(pout, nbytes), flush=True)
    for _ in range(conns):
        t0 = time.monotonic()
        echo_once(echo)
        print("RESULT connect %.3f" % ((time.monotonic() - t0) * 1000), flush=True)


main()
