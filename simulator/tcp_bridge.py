"""One TCP connection for the virtual device (simulator/virtual_device.mjs), over two FIFOs.

    python tcp_bridge.py HOST PORT TO_BOARD_FIFO FROM_BOARD_FIFO

Writes "OK\\n" or "ERR <errno>\\n" to the board first, then copies bytes both ways until
either side closes. Node cannot use sockets synchronously, but it can FIFOs.
"""

import errno
import os
import socket
import sys
import threading


def pump_to_socket(source, sock: socket.socket) -> None:
    while data := os.read(source, 65536):
        try:
            sock.sendall(data)
        except OSError:
            break
    try:
        sock.shutdown(socket.SHUT_RDWR)  # the board closed: so does the connection
    except OSError:
        pass


def main(host: str, port: str, to_board: str, from_board: str) -> None:
    out = os.open(to_board, os.O_WRONLY)
    source = os.open(from_board, os.O_RDONLY)
    try:
        sock = socket.create_connection((host, int(port)), timeout=10)
    except OSError as exc:
        os.write(out, f"ERR {exc.errno or errno.ECONNREFUSED}\n".encode())
        return
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    os.write(out, b"OK\n")
    threading.Thread(target=pump_to_socket, args=(source, sock), daemon=True).start()
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            break
        if not data:
            break
        try:
            os.write(out, data)
        except BrokenPipeError:
            break
    os.close(out)  # end of stream for the board


if __name__ == "__main__":
    main(*sys.argv[1:5])
