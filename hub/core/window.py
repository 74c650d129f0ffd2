"""Replay window and loss accounting for one device epoch (sans-I/O).

The window is an RFC 6479 ring: WINDOW bits of history plus one spare block, indexed by
seq modulo the ring size, so moving forward clears whole blocks instead of shifting.
Blocks are bytes here (8 bits), which keeps the ring a single 129-byte bytearray.

Loss follows RFC 3550 A.3: expected = top - base + 1, lost = expected - accepted. Loss
bursts and Gilbert-Elliott transitions are kept exact as frames arrive: revealing a gap
adds one loss run; a late frame filling a hole changes only the two pairs around it.

Positions that fall more than WINDOW behind top can no longer change (a frame that old is a
replay), so that is when each one is tallied, once and in order, into the link's loss-pattern
moments (hub.counters PATTERN_*): the ring keeps one block more than the window needs so that
the two positions before a block being tallied are still there.

A device's heartbeat can reveal losses at the tail of a stream, which no later frame has
shown yet (`reveal`): top then moves onto a lost position. The pair after such a top is
counted ahead as lost->received, so the in-order fast path needs no extra check; a gap or a
late frame that meets a lost top corrects for it.
"""

import struct

from hub.core.counters import (
    BURSTS,
    DUPLICATE,
    L2R,
    LOST,
    LOST_ON_DEVICE,
    LOST_UNKNOWN,
    PATTERN_BATCH,
    PATTERN_GROUPS,
    PATTERN_SLOTS,
    R2L,
    REDELIVERED,
    REORDERED,
    REPLAY,
    SLOTS,
    UNSURE_ON_DEVICE,
    VALID,
)

WINDOW = 1024
# The window's blocks, one spare block that top moves into, and the last tallied block.
_RING_BYTES = WINDOW // 8 + 2
_RING_BITS = _RING_BYTES * 8
_OPEN_BLOCKS = WINDOW // 8  # blocks top >> 3 - _OPEN_BLOCKS and above are still open
_OLD_RING_BYTES = WINDOW // 8 + 1  # device state format 3 and before


def _pattern_table() -> list:
    """(lost, lost pairs, lost at lag 2, lost triples) among one block's 8 positions, by the
    block's loss bits (bit 0 first) shifted left 2 over the two positions before it."""
    table = []
    for index in range(1024):
        bits = [(index >> i) & 1 for i in range(10)]  # two earlier positions, then the block's 8
        table.append((sum(bits[2:]), sum(bits[t - 1] & bits[t] for t in range(2, 10)),
                      sum(bits[t - 2] & bits[t] for t in range(2, 10)),
                      sum(bits[t - 2] & bits[t - 1] & bits[t] for t in range(2, 10))))
    return table


_PATTERN = _pattern_table()
_BLOCKS_PER_BATCH = PATTERN_BATCH // 8


class EpochWindow:
    __slots__ = ("epoch", "base", "top", "ring", "owed_link", "owed", "owed_more", "ended")

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
        # How the epoch ended, from the device's next birth (end_epoch): [kept_end, certain_end,
        # sealed_end, written_from, written_to]; the last two are -1 until the write-off is done.
        self.ended = None

    # -- persistence: the hub stores each window with the records it let in ----------

    _HEAD = struct.Struct(">IqqhqB")
    _ENDED = struct.Struct(">5q")

    def to_bytes(self) -> bytes:
        more = sorted((self.owed_more or {}).items())
        out = self._HEAD.pack(self.epoch, self.base, self.top, self.owed_link, self.owed, len(more))
        ended = b"\x00" if self.ended is None else b"\x01" + self._ENDED.pack(*self.ended)
        return out + bytes(self.ring) + b"".join(struct.pack(">Bq", link, holes) for link, holes in more) + ended

    @classmethod
    def from_bytes(cls, data: bytes, offset: int = 0, old_ring: bool = False) -> tuple["EpochWindow", int]:
        """A window and the offset just past it; old_ring: stored with the one-block-shorter
        ring of device state format 3 and before."""
        epoch, base, top, owed_link, owed, n_more = cls._HEAD.unpack_from(data, offset)
        offset += cls._HEAD.size
        window = cls(epoch, base)
        window.top, window.owed_link, window.owed = top, owed_link, owed
        if old_ring:
            ring, bits = data[offset : offset + _OLD_RING_BYTES], _OLD_RING_BYTES * 8
            for seq in range(max(base, top - bits + 1), top + 1):
                if (ring[(seq % bits) >> 3] >> (seq % 8)) & 1:
                    window._set(seq)
            offset += _OLD_RING_BYTES
        else:
            window.ring[:] = data[offset : offset + _RING_BYTES]
            offset += _RING_BYTES
        if n_more:
            window.owed_more = {}
            for _ in range(n_more):
                link, holes = struct.unpack_from(">Bq", data, offset)
                window.owed_more[link] = holes
                offset += 9
        if not old_ring:  # format 4 on: how the epoch ended, if known
            if data[offset]:
                window.ended = list(cls._ENDED.unpack_from(data, offset + 1))
                offset += cls._ENDED.size
            offset += 1
        return window, offset

    def _bit(self, seq: int) -> int:
        pos = seq % _RING_BITS
        return (self.ring[pos >> 3] >> (pos & 7)) & 1

    def _set(self, seq: int) -> None:
        pos = seq % _RING_BITS
        self.ring[pos >> 3] |= 1 << (pos & 7)

    def _advance(self, new_top: int, lc) -> None:
        # Tally the blocks that leave the window, then clear the blocks that new positions
        # (top, new_top] land in, except the one top is in.
        old_block, new_block = self.top >> 3, new_top >> 3
        first = max(old_block - _OPEN_BLOCKS, self.base >> 3)
        if new_block - _OPEN_BLOCKS > first:
            self._tally_blocks(first, new_block - _OPEN_BLOCKS, self.top, lc)
        if new_block - old_block >= _RING_BYTES:
            self.ring[:] = bytes(_RING_BYTES)
            return
        for block in range(old_block + 1, new_block + 1):
            self.ring[block % _RING_BYTES] = 0

    # -- loss-pattern moments of positions that left the window --------------------------

    def _tally_blocks(self, first: int, end: int, top: int, lc) -> None:
        """Tally blocks [first, end) into link counters lc; top is the top they were seen under
        (positions above it are lost, whatever the ring still holds for them)."""
        full_lost_from = (top >> 3) + 2  # blocks from here on, and the two positions before each, were never received
        for block in range(first, min(end, full_lost_from)):
            self._tally_block(block, top, lc)
        if end > full_lost_from:
            self._tally_lost_run(max(first, full_lost_from) << 3, end << 3, lc)

    def _lost_bits(self, block: int, top: int) -> int:
        if block > top >> 3:
            return 0xFF
        return ~self.ring[block % _RING_BYTES] & 0xFF  # bits above top in top's block are clear: lost

    def _tally_block(self, block: int, top: int, lc) -> None:
        start, base = block << 3, self.base
        lost = self._lost_bits(block, top)
        earlier = self._lost_bits(block - 1, top) >> 6
        offset = SLOTS + ((block // _BLOCKS_PER_BATCH + self.epoch) % PATTERN_GROUPS) * PATTERN_SLOTS
        if start - 2 >= base:
            tallies = _PATTERN[earlier | lost << 2]
            lc[offset] += 8
        else:  # the epoch's counting starts inside this block or just before it
            tallies = [0, 0, 0, 0]
            history = []
            for s in range(start - 2, start + 8):
                bit = (earlier >> (s - start + 2)) & 1 if s < start else (lost >> (s - start)) & 1
                if s < base:
                    continue
                history.append(bit)
                if s >= start:
                    lc[offset] += 1
                    x1 = history[-2] if len(history) > 1 else 0
                    x2 = history[-3] if len(history) > 2 else 0
                    tallies[0] += bit
                    tallies[1] += x1 & bit
                    tallies[2] += x2 & bit
                    tallies[3] += x2 & x1 & bit
        lc[offset + 1] += tallies[0]
        lc[offset + 2] += tallies[1]
        lc[offset + 3] += tallies[2]
        lc[offset + 4] += tallies[3]

    def _tally_lost_run(self, start: int, end: int, lc) -> None:
        """Positions [start, end) (whole blocks) all lost, as were the two before start."""
        batch = start // PATTERN_BATCH
        while start < end:
            if end - start >= PATTERN_BATCH * PATTERN_GROUPS and start % PATTERN_BATCH == 0:
                rounds = (end - start) // (PATTERN_BATCH * PATTERN_GROUPS)  # every group alike
                for group in range(PATTERN_GROUPS):
                    offset = SLOTS + group * PATTERN_SLOTS
                    for i in range(PATTERN_SLOTS):
                        lc[offset + i] += rounds * PATTERN_BATCH
                start += rounds * PATTERN_BATCH * PATTERN_GROUPS
                batch = start // PATTERN_BATCH
                continue
            stop = min(end, (batch + 1) * PATTERN_BATCH)
            offset = SLOTS + ((batch + self.epoch) % PATTERN_GROUPS) * PATTERN_SLOTS
            for i in range(PATTERN_SLOTS):
                lc[offset + i] += stop - start
            start, batch = stop, batch + 1

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
                block = (seq >> 3) - _OPEN_BLOCKS - 1  # leaves the window now
                if (block << 3) + 7 >= self.base:
                    self._tally_blocks(block, block + 1, top, link_counters[link])
                self.ring[pos >> 3] = 1
            self.top = seq
            return VALID
        if seq > top:
            self._advance(seq, link_counters[link])
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
        self._advance(sent_seq, link_counters[link])
        self.top = sent_seq
        self._lose_after(top, sent_seq - top, link, device, link_counters)
        return sent_seq - top

    # -- records a reset destroyed on the device -------------------------------------------

    def end_epoch(self, kept_end: int, sealed_end: int, lease: int) -> None:
        """The device's next birth says how this epoch ended: every seq below sealed_end - lease
        was sealed and none from sealed_end on; the frames below kept_end it still holds on
        flash are on their way. settle_end() writes the rest off once they are here."""
        if self.ended is None:
            self.ended = [kept_end, max(0, sealed_end - lease), sealed_end, -1, -1]

    def settle_end(self, link: int, device, link_counters, drained: bool) -> bool:
        """Count what the reset destroyed: the positions above top (and above what the device
        kept) below the certain end as lost on the device, those up to sealed_end as unsure.
        Waits until top has reached the kept frames, or the device says its queue is empty
        (drained: kept frames that never came were lost on the link). True when it counted."""
        ended = self.ended
        if ended is None or ended[3] >= 0:
            return False
        kept_end, certain_end, sealed_end = ended[0], ended[1], ended[2]
        if self.top + 1 < kept_end:
            if not drained:
                return False
            self.reveal(kept_end - 1, link, device, link_counters)
        start = self.top + 1
        lc = link_counters[link]
        destroyed = certain_end - start
        if destroyed > 0:
            self._advance(certain_end - 1, lc)
            self.top = certain_end - 1
            self._owe(link, destroyed)
            for c in (device, lc):
                c[LOST] += destroyed
                c[LOST_ON_DEVICE] += destroyed
        unsure = sealed_end - max(certain_end, start)
        if unsure > 0:
            for c in (device, lc):
                c[UNSURE_ON_DEVICE] += unsure
        ended[3], ended[4] = start, max(start, certain_end)
        return True

    def _extend_base(self, seq, link, device, link_counters, late):
        # A device first seen mid-epoch sends an earlier frame late: counting now starts at
        # seq, and the positions between it and the old base become one loss run; the ones
        # before the old base were counted as unknown (the verifier's EpochWindow creation).
        holes = self.base - seq - 1
        known = self.base - seq
        self.base = seq
        lc = link_counters[link]
        for c in (device, lc):
            c[late] += 1
            c[LOST_UNKNOWN] -= min(known, c[LOST_UNKNOWN])
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
        ended = self.ended
        if ended is not None and ended[3] <= seq < ended[4]:  # written off, yet it was on its way
            for c in (device, owner):
                c[LOST] -= 1
                c[LOST_ON_DEVICE] -= 1
            return
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
