# socket for the virtual board: TCP through the harness (simulator/virtual_device.mjs), with the
# parts of MicroPython's socket API that umqtt.simple and the firmware use.
import binascii

import _vdev
import machine

AF_INET = 2
SOCK_STREAM = 1
IPPROTO_TCP = 6
_ETIMEDOUT = 110
_ENOTCONN = 107


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    return [(AF_INET, SOCK_STREAM, IPPROTO_TCP, "", (host, port))]


class socket:
    def __init__(self, af=AF_INET, type=SOCK_STREAM, proto=IPPROTO_TCP):
        self._id = 0
        self._timeout_ms = -1  # blocking

    def connect(self, addr):
        result = _vdev.connect(addr[0], addr[1])
        if result < 0:
            raise OSError(-result)
        self._id = result

    def settimeout(self, seconds):
        self._timeout_ms = -1 if seconds is None else int(seconds * 1000)

    def setblocking(self, flag):
        self._timeout_ms = -1 if flag else 0

    def write(self, buf, n=None):
        if not self._id:
            raise OSError(_ENOTCONN)
        if isinstance(buf, str):  # MicroPython's sockets take str too (umqtt.simple relies on it)
            buf = buf.encode()
        data = bytes(buf) if n is None else bytes(buf[:n])
        sent = _vdev.send(self._id, binascii.hexlify(data).decode())
        if sent < 0:
            raise OSError(-sent)
        return sent

    send = write
    sendall = write

    def _recv(self, n):
        machine._poll()
        got = _vdev.recv(self._id, n, self._timeout_ms)
        if got is None:
            if self._timeout_ms == 0:
                return None  # non-blocking and nothing there
            raise OSError(_ETIMEDOUT)
        return binascii.unhexlify(got)

    def recv(self, n):
        return self._recv(n) if self._id else b""

    def read(self, n=4096):
        # A stream read: n bytes unless the connection ends first (as MicroPython's is).
        out = self.recv(n)
        if not out:
            return out
        while len(out) < n:
            more = self._recv(n - len(out))
            if not more:
                break
            out += more
        return out

    def readinto(self, buf, n=None):
        data = self.read(len(buf) if n is None else n)
        if data is None:
            return None
        buf[: len(data)] = data
        return len(data)

    def close(self):
        if self._id:
            _vdev.close(self._id)
            self._id = 0

    def setsockopt(self, *args):
        pass
