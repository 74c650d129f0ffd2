# Store-and-forward: sealed frames wait here until the broker has them.
#
# A bounded RAM queue in front of a bounded append-only file on flash. New frames go to
# RAM; when RAM is full the oldest RAM frame moves to the file. Delivery takes the oldest
# first (file, then RAM). When the file is full too, its oldest frames are dropped and
# counted as source drops, which the device reports in its status messages so the hub can
# tell records dropped at the source from records lost on the link.
#
# File layout: records of [2-byte big-endian length][frame]. The read position, the drop
# count and the file's generation live in a small state file, replaced atomically, so the
# queue survives a reboot. Compaction writes the next generation's file and only then
# switches the state to it: a power cut at any point leaves a state that names an intact
# file and the right read position in it.
import os
import struct


class Store:
    def __init__(self, path, ram_frames=64, file_bytes=32768):
        self.base_path = path
        self.state_path = path + ".state"
        self.ram_frames = ram_frames
        self.file_bytes = file_bytes
        self.ram = []
        self.head = 0  # file offset of the oldest undelivered frame
        self.source_drops = 0
        self.generation = 0  # the file is path for generation 0, then path.1, path.2, ...
        self.writes = 0  # flash writes made (files written or replaced), reported in heartbeats
        self._load_state()

    # -- persistence of the file's read position and the drop count -----------------------

    def _file_for(self, generation):
        return self.base_path if generation == 0 else "%s.%d" % (self.base_path, generation)

    def _load_state(self):
        try:
            with open(self.state_path) as f:
                fields = [int(x) for x in f.read().split()]
            self.head, self.source_drops = fields[0], fields[1]
            self.generation = fields[2] if len(fields) > 2 else 0
        except (OSError, ValueError, IndexError):
            self.head, self.source_drops, self.generation = 0, 0, 0
        self.path = self._file_for(self.generation)
        if self.generation:
            try:  # what a power cut right after a compaction left behind
                os.remove(self._file_for(self.generation - 1))
            except OSError:
                pass
        if self.head > self._file_size():
            self.head = 0

    def _save_state(self):
        self.writes += 1
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d %d %d\n" % (self.head, self.source_drops, self.generation))
        try:
            os.rename(tmp, self.state_path)
        except OSError:
            os.remove(self.state_path)
            os.rename(tmp, self.state_path)

    def _file_size(self):
        try:
            return os.stat(self.path)[6]
        except OSError:
            return 0

    # -- the queue ---------------------------------------------------------------------------

    def __len__(self):
        return self._file_count() + len(self.ram)

    def _file_count(self):
        count = 0
        for _ in self._file_records():
            count += 1
        return count

    def _file_records(self):
        """(offset, frame) of every undelivered frame in the file, oldest first."""
        try:
            f = open(self.path, "rb")
        except OSError:
            return
        with f:
            f.seek(self.head)
            offset = self.head
            while True:
                header = f.read(2)
                if len(header) < 2:
                    return
                length = struct.unpack(">H", header)[0]
                frame = f.read(length)
                if len(frame) < length:
                    return  # a record cut short by a power loss: ignore it
                yield offset, frame
                offset += 2 + length

    def put(self, frame):
        self.ram.append(frame)
        if len(self.ram) > self.ram_frames:
            self._spill(self.ram.pop(0))

    def _spill(self, frame):
        needed = 2 + len(frame)
        if needed > self.file_bytes:
            self.source_drops += 1
            self._save_state()
            return
        while self._file_size() - self.head + needed > self.file_bytes and self._drop_oldest_in_file():
            pass
        if self._file_size() + needed > self.file_bytes:
            self._compact()
        with open(self.path, "ab") as f:
            f.write(struct.pack(">H", len(frame)))
            f.write(frame)
        self.writes += 1
        self._save_state()

    def _compact(self):
        # Copy the undelivered tail to the next generation's file in small chunks (little
        # RAM), switch the state to it, then remove the old file.
        old = self.path
        new = self._file_for(self.generation + 1)
        with open(old, "rb") as src, open(new, "wb") as dst:
            src.seek(self.head)
            while True:
                chunk = src.read(512)
                if not chunk:
                    break
                dst.write(chunk)
        self.writes += 1
        self.generation += 1
        self.path, self.head = new, 0
        self._save_state()
        os.remove(old)

    def _drop_oldest_in_file(self):
        for offset, frame in self._file_records():
            self.head = offset + 2 + len(frame)
            self.source_drops += 1
            return True
        return False

    def frames(self):
        """Every undelivered frame, oldest first (file, then RAM)."""
        for _, frame in self._file_records():
            yield frame
        for frame in self.ram:
            yield frame

    def peek(self):
        """The oldest undelivered frame, or None."""
        for _, frame in self._file_records():
            return frame
        return self.ram[0] if self.ram else None

    def pop(self):
        """Forget the oldest frame: the broker has acknowledged it."""
        for offset, frame in self._file_records():
            self.head = offset + 2 + len(frame)
            if self.head >= self._file_size():
                os.remove(self.path)
                self.head = 0
            self._save_state()
            return
        if self.ram:
            self.ram.pop(0)

    def drop(self):
        """Forget the oldest frame unsent (the link can never carry it): a source drop."""
        self.pop()
        self.source_drops += 1
        self._save_state()
