"""Replay window and loss accounting for one device epoch (sans-I/O).

The window is an RFC 6479 ring: WINDOW bits of history plus one spare block, indexed by
seq modulo the ring size, so moving forward clears whole blocks instead of shifting.
Blocks are bytes here (8 bits), which keeps the ring a single 129-byte bytearray.

Loss follows RFC 3550 A.3: expected = top - base + 1, lost = expected - accepted. Loss
bursts and Gilbert-Elliott transitions are kept exact as frames arrive: revealing a gap
adds one loss run; a late frame filling a hole changes only the two pairs around it.

A device's heartbeat can reveal losses at the tail of a stream, which no later frame has
shown yet (`reveal`): top then moves onto a lost position. The pair after such a top is
counted ahead as lost->received, so the in-order fast path needs no extra check; a gap or a
late frame that meets a lost top corrects for it.
"""

import struct

from hub.core.counters import BURSTS, DUPLICATE, L2R, LOST, R2L, REDELIVERED, REORDERED, REPLAY, VALID

WINDOW = 1024
_RING_BYTES = WINDOW // 8 + 1
_RING_BITS = _RING_BYTES * 8


class EpochWindow:
    __slots__ = ("epoch", "base", "top", "ring", "owed_link", "owed", "owed_more")

    def __init__(self, epoch: int, first_seq: int):
        """first_seq: where counting starts (0 for an epoch seen from its start)."""
        self.epoch = epoch
        self.base = first_seq  # lowest sequence number counted as expected
        self.top = first_seq - 1  # highest sequence number accepted
        self.ring = bytearray(_RING_BYTES)
        # Holes are charged to the link of the frame that revealed them and paid back to
        # that link when a late frame fills one; devices rarely switch links, so a second
        # link's share lives in a dict that normally does not exist.
        self.owed_link = -1
        self.owed = 0
        self.owed_more = None

    # -- persistence: the hub stores each window with the records it let in ----------

    _HEAD = struct.Struct(">IqqhqB")

    def to_bytes(self) -> bytes:
        more = sorted((self.owed_more or {}).items())
        out = self._HEAD.pack(self.epoch, self.base, self.top, self.owed_link, self.owed, len(more))
        return out + bytes(self.ring) + b"".join(struct.pack(">Bq", link, holes) for link, holes in more)

    @classmethod
    def from_bytes(cls, data: bytes, offset: int = 0) -> tuple["EpochWindow", int]:
        """A window and the offset just past it."""
        epoch, base, top, owed_link, owed, n_more = cls._HEAD.unpack_from(data, offset)
        offset += cls._HEAD.size
        window = cls(epoch, base)
        window.top, window.owed_link, window.owed = top, owed_link, owed
        window.ring[:] = data[offset : offset + _RING_BYTES]
        offset += _RING_BYTES
        if n_more:
            window.owed_more = {}
            for _ in range(n_more):
                link, holes = struct.unpack_from(">Bq", data, offset)
                window.owed_more[link] = holes
                offset += 9
        return window, offset

    def _bit(self, seq: int) -> int:
        pos = seq % _RING_BITS
        return (self.ring[pos >> 3] >> (pos & 7)) & 1

    def _set(self, seq: int) -> None:
        pos = seq % _RING_BITS
        self.ring[pos >> 3] |= 1 << (pos & 7)

    def _advance(self, new_top: int) -> None:
        # Clear the blocks that new positions (top, new_top] land in, except the one top is in.
        old_block, new_block = self.top >> 3, new_top >> 3
        if new_block - old_block >= _RING_BYTES:
            self.ring[:] = bytes(_RING_BYTES)
            return
        for block in range(old_block + 1, new_block + 1):
            self.ring[block % _RING_BYTES] = 0

    def _owe(self, link: int, holes: int) -> None:
        if self.owed_link == link or self.owed == 0:
            self.owed_link = link
            self.owed += holes
        else:
            more = self.owed_more if self.owed_more is not None else {}
            more[link] = more.get(link, 0) + holes
            self.owed_more = more

    def _pay(self, link: int) -> int:
        """Take one hole off a link's debt and return that link's code."""
        more = self.owed_more
        if more and more.get(link, 0) > 0 and self.owed_link != link:
            more[link] -= 1
            return link
        if self.owed > 0:
            self.owed -= 1
            return self.owed_link
        for other, holes in more.items():
            if holes > 0:
                more[other] -= 1
                return other
        raise AssertionError("a hole was filled that no link owed")

    def accept(self, seq: int, link: int, device, link_counters, redelivered: bool = False) -> str:
        """Account one authentic frame; returns its counter slot: VALID, DUPLICATE, REDELIVERED or REPLAY.

        device and link_counters[link] are counter arrays (hub.counters); the caller counts
        the returned slot, this method the loss pattern and reordering. redelivered: the
        broker delivered it again, so neither arriving late nor a second copy is the link's doing.
        """
        top = self.top
        if seq == top + 1:  # the common case, inlined: the next frame in order
            pos = seq % _RING_BITS
            if pos & 7:
                self.ring[pos >> 3] |= 1 << (pos & 7)
            else:  # first bit of a block that held positions one ring ago
                self.ring[pos >> 3] = 1
            self.top = seq
            return VALID
        if seq > top:
            self._advance(seq)
            self._set(seq)
            self.top = seq
            if seq - top - 1:
                self._lose_after(top, seq - top - 1, link, device, link_counters)
            return VALID
        if seq <= top - WINDOW:
            return REPLAY
        late = REDELIVERED if redelivered else REORDERED
        if seq < self.base:
            self._set(seq)
            self._extend_base(seq, link, device, link_counters, late)
            return VALID
        if self._bit(seq):
            return REDELIVERED if redelivered else DUPLICATE
        self._set(seq)
        self._fill_hole(seq, link, device, link_counters, late)
        return VALID

    def _lose_after(self, top, gap, link, device, link_counters):
        # A run of `gap` losses follows the old top; it starts after a received frame unless
        # the epoch's first frames are the ones missing. When the old top is itself a lost
        # tail (see reveal), the run simply grows: its end was counted ahead already.
        lc = link_counters[link]
        self._owe(link, gap)
        if top >= self.base and not self._bit(top):
            for c in (device, lc):
                c[LOST] += gap
            return
        started = 1 if top >= self.base else 0
        for c in (device, lc):
            c[LOST] += gap
            c[BURSTS] += 1
            c[L2R] += 1
            c[R2L] += started

    def reveal(self, sent_seq: int, link: int, device, link_counters) -> int:
        """The device says the broker has every frame up to sent_seq: count the ones above
        top as lost now (late arrivals are then reordered frames). Returns how many."""
        top = self.top
        if sent_seq <= top:
            return 0
        self._advance(sent_seq)
        self.top = sent_seq
        self._lose_after(top, sent_seq - top, link, device, link_counters)
        return sent_seq - top

    def _extend_base(self, seq, link, device, link_counters, late):
        # A device first seen mid-epoch sends an earlier frame late: counting now starts at
        # seq, and the positions between it and the old base become one loss run.
        holes = self.base - seq - 1
        self.base = seq
        lc = link_counters[link]
        for c in (device, lc):
            c[late] += 1
        if holes:
            self._owe(link, holes)
            for c in (device, lc):
                c[LOST] += holes
                c[BURSTS] += 1
                c[R2L] += 1
                c[L2R] += 1

    def _fill_hole(self, seq, link, device, link_counters, late):
        owner = link_counters[self._pay(link)]
        link_counters[link][late] += 1
        device[late] += 1
        # seq was lost and is now received: only the pairs (seq-1, seq) and (seq, seq+1)
        # change. seq+1 <= top always exists; seq-1 may lie before counting began.
        left = None if seq == self.base else self._bit(seq - 1)
        right = 1 if seq == self.top else self._bit(seq + 1)  # a lost top's next pair was counted ahead
        for c in (device, owner):
            c[LOST] -= 1
            if left == 1:
                c[R2L] -= 1
            elif left == 0:
                c[L2R] += 1
            if right:
                c[L2R] -= 1
            else:
                c[R2L] += 1
            # A hole between two losses splits a run; a hole alone removes one.
            c[BURSTS] += (left == 0) + (right == 0) - 1
