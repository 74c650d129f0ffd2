# Seal mark: how far the current epoch may have got, persisted cheaply, so that the next
# boot's birth can tell the hub which records a reset destroyed (docs/protocol.md, "Records
# destroyed on the device"). A power cut loses the frames still in the RAM queue: the newest
# of their epoch, which no later frame reveals.
#
# The file holds "EPOCH SEALED_END LEASE CRC": no seq >= SEALED_END of EPOCH was sealed, and
# every seq below SEALED_END - LEASE was. It is rewritten when sealing reaches SEALED_END,
# before that record is sealed: once every LEASE records, never once per record (flash
# wears). A clean stop writes the exact end (LEASE 0). Replaced atomically, like the epoch.
import binascii
import os

LEASE = 64


def _encode(fields):
    text = " ".join(str(x) for x in fields)
    return "%s %08x\n" % (text, binascii.crc32(text.encode()) & 0xFFFFFFFF)


def _decode(data):
    parts = data.split()
    if len(parts) != 4:
        raise ValueError("not EPOCH SEALED_END LEASE CRC")
    text = " ".join(parts[:3])
    if "%08x" % (binascii.crc32(text.encode()) & 0xFFFFFFFF) != parts[3]:
        raise ValueError("CRC mismatch")
    fields = [int(x) for x in parts[:3]]
    if min(fields) < 0 or fields[2] > fields[1]:
        raise ValueError("out of range")
    return fields


class SealMark:
    def __init__(self, path, epoch, lease=LEASE):
        self.path = path
        self.epoch = epoch
        self.lease = lease
        self.sealed_end = 0  # nothing of this epoch covered yet: the first seal writes the file
        self.writes = 0  # flash writes made, reported in heartbeats
        self.previous = self._read()  # [epoch, sealed_end, lease] left by the last run, or None

    def _read(self):
        for candidate in (self.path, self.path + ".tmp"):
            try:
                with open(candidate) as f:
                    return _decode(f.read())
            except (OSError, ValueError):  # missing or damaged: the birth simply says nothing
                continue
        return None

    def _write(self, sealed_end, lease):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(_encode((self.epoch, sealed_end, lease)))
        try:
            os.rename(tmp, self.path)
        except OSError:  # FAT will not rename over an existing file
            os.remove(self.path)
            os.rename(tmp, self.path)
        self.writes += 1

    def prev_field(self, kept_end):
        """The birth's `prev` for the epoch before this one: [epoch, kept_end, sealed_end,
        lease], kept_end = 1 + the highest seq of it still queued here (0: none); or None
        when the last run's mark is not of that epoch (nothing sealed in it, or no file)."""
        previous = self.previous
        if previous is None or previous[0] != self.epoch - 1:
            return None
        return [previous[0], min(kept_end, previous[1]), previous[1], previous[2]]

    def before_seal(self, epoch, seq):
        """Call before sealing (epoch, seq): extends the mark when seq reaches it."""
        if epoch != self.epoch:  # the sealer moved to a new epoch (its seq counter wrapped)
            self.epoch, self.sealed_end = epoch, 0
        if seq >= self.sealed_end:
            self.sealed_end = seq + self.lease
            self._write(self.sealed_end, self.lease)

    def stop(self, next_seq):
        """A clean stop: the exact end of the epoch."""
        self._write(next_seq, 0)


def kept_end(frames, epoch, decode):
    """1 + the highest seq of `epoch` among queued frames (decode(frame) -> (epoch, seq)), 0 if none."""
    end = 0
    for data in frames:
        try:
            frame_epoch, seq = decode(data)
        except ValueError:
            continue
        if frame_epoch == epoch and seq >= end:
            end = seq + 1
    return end
