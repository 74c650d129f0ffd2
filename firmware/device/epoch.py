# Boot epoch: advanced and persisted before the first record of every boot, so no
# (epoch, seq) is ever sealed twice. The file holds "EPOCH CRC32" so damage is detected;
# it is replaced atomically (write a temporary file, then rename). A missing or damaged
# file must never let the epoch go backwards: advance() refuses and the device reports it.
import binascii
import os


class EpochError(Exception):
    pass


def _encode(epoch):
    text = str(epoch)
    return "%s %08x\n" % (text, binascii.crc32(text.encode()) & 0xFFFFFFFF)


def _decode(data):
    parts = data.split()
    if len(parts) != 2:
        raise ValueError("not EPOCH CRC")
    if "%08x" % (binascii.crc32(parts[0].encode()) & 0xFFFFFFFF) != parts[1]:
        raise ValueError("CRC mismatch")
    epoch = int(parts[0])
    if epoch < 0:
        raise ValueError("negative")
    return epoch


def _read(path):
    with open(path) as f:
        return _decode(f.read())


def write(path, epoch):
    """Persist epoch at path atomically (the provisioning step writes the first one)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(_encode(epoch))
    try:
        os.rename(tmp, path)
    except OSError:  # FAT will not rename over an existing file: remove it first
        os.remove(path)
        os.rename(tmp, path)


def current(path):
    """The persisted epoch; EpochError if it is missing or damaged."""
    for candidate in (path, path + ".tmp"):  # a crash between remove and rename leaves only .tmp
        try:
            return _read(candidate)
        except OSError:
            continue
        except ValueError as exc:
            raise EpochError("epoch file %s is damaged (%s): refusing to seal" % (candidate, exc))
    raise EpochError("epoch file %s is missing: refusing to seal (re-provision the device)" % path)


def advance(path):
    """Move to the next epoch and persist it before returning it."""
    epoch = current(path) + 1
    write(path, epoch)
    if current(path) != epoch:
        raise EpochError("epoch file %s did not keep the new epoch" % path)
    return epoch
