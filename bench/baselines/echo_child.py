"""The IPC floor's child: a blocking echo on an inherited socket (fd in argv[1]).

Started once by bench/starts.py; it sends back every message it receives
and exits at EOF.
"""

import socket
import sys


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    while True:
        data = sock.recv(65536)
        if not data:
            return
        sock.send(data)


if __name__ == "__main__":
    main()
