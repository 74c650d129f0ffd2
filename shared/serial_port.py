"""Opening a serial port for the relay and the Linux agent, with errors that name the option."""

from .cli import InputError


def open_port(name: str, baud: int, rs485: bool, option: str = "--port"):
    """A pyserial port with a short read timeout; with rs485, in the kernel's RS-485 mode
    (TIOCSRS485: the driver raises DE around each write)."""
    import serial

    try:
        port = serial.Serial(name, baudrate=baud, timeout=0.02)
    except (serial.SerialException, ValueError) as exc:
        raise InputError(f"{option} {name}: cannot open it ({exc})") from None
    if rs485:
        from serial.rs485 import RS485Settings

        try:
            port.rs485_mode = RS485Settings()
        except (serial.SerialException, ValueError, OSError) as exc:
            port.close()
            raise InputError(f"--rs485: the kernel refused RS-485 mode on {name} ({exc}); use an adapter whose "
                             "driver supports it, or one with automatic direction control and no --rs485") from None
    return port
