#!/usr/bin/env python3
"""Make the testbed's APIs answer inside "the internet" namespace.

    forwarder.py NETNS PORT...

Listens on every address inside network namespace NETNS on each PORT (so on
the external gateway's address, where guests reach the public endpoints, and
on that namespace's own loopback), and relays each connection to
127.0.0.1:PORT in the namespace this process was started in.  It connects to
nothing else.  Standard library only.
"""

import ctypes
import os
import selectors
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def listeners(netns, ports):
    """Sockets bound inside netns; the calling thread returns to its own namespace."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    socks = []
    try:
        setns(target)
        for port in ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", port))
            sock.listen(128)
            socks.append((sock, port))
    finally:
        setns(home)
        os.close(home)
        os.close(target)
    return socks


def pipe(a, b):
    """Copy both ways between two connected sockets until either side closes."""
    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    try:
        while True:
            for key, _ in sel.select():
                data = key.fileobj.recv(65536)
                if not data:
                    return
                key.data.sendall(data)
    except OSError:
        return
    finally:
        sel.close()
        a.close()
        b.close()


def serve(sock, port):
    while True:
        client, _ = sock.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            continue
        threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    netns, ports = argv[0], [int(p) for p in argv[1:]]
    socks = listeners(netns, ports)
    print(f"forwarding {', '.join(map(str, ports))} from namespace {netns} to 127.0.0.1",
          flush=True)
    threads = [threading.Thread(target=serve, args=s, daemon=True) for s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main(sys.argv[1:])
