# network for the virtual board: a WiFi interface that is always connected (the harness's
# loopback stands for the access point).
STA_IF = 0
AP_IF = 1


class WLAN:
    def __init__(self, interface=STA_IF):
        self._active = False

    def active(self, flag=None):
        if flag is not None:
            self._active = bool(flag)
        return self._active

    def connect(self, ssid=None, key=None):
        self._active = True

    def isconnected(self):
        return self._active

    def ifconfig(self):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")
