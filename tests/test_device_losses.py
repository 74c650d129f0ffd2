"""No sealed record missing without a count: records a reset destroyed on the device
(written off from the next birth's `prev`), and the positions before the first frame seen of
an epoch (link loss when the hub saw the birth, lost_unknown otherwise)."""

from agent import Sealer, topic_for
from agent.sealer import status_topic_for
from agent.status import BIRTH, HEARTBEAT, status_payload
from hub.core.report import build_report

from .conftest import KEY, make_verifier

REC, STATUS = topic_for("pump-1"), status_topic_for("pump-1")


class Device:
    """A device's sealer per boot, and what the hub got from it."""

    def __init__(self, verifier, epoch=1):
        self.verifier = verifier
        self.sealer = Sealer("pump-1", KEY, epoch=epoch)
        self.frames = {}

    def seal(self, count):
        for _ in range(count):
            seq = self.sealer.seq
            self.frames[seq] = self.sealer.seal(b"r")

    def deliver(self, seqs):
        return [self.verifier.verify_message(REC, self.frames[s], 1.0).outcome for s in seqs]

    def status(self, kind, queued=0, prev=None):
        doc = status_payload(kind, self.sealer, queued, 0, None, "power_on", 0, prev)
        return self.verifier.verify_message(STATUS, self.sealer.seal_status(doc), 2.0).outcome

    def reboot(self):
        """A power cut: RAM is gone; the next boot seals in the next epoch."""
        self.sealer = Sealer("pump-1", KEY, epoch=self.sealer.epoch + 1)
        self.frames = {}


def device_entry(verifier):
    return build_report(verifier)["devices"]["pump-1"]


def power_cut(verifier, delivered, kept_end):
    """100 records sealed in epoch 1 with a seal lease of 16 (the mark read 112 after seq 96:
    0-95 surely sealed); the hub got seqs below `delivered`; the device kept those below
    kept_end on flash; the power went and the epoch-2 birth says so. Returns the device and
    its epoch-1 frames."""
    device = Device(verifier)
    device.status(BIRTH)
    device.seal(100)
    frames = dict(device.frames)
    assert set(device.deliver(range(delivered))) == {"valid"}
    device.reboot()
    assert device.status(BIRTH, queued=max(0, kept_end - delivered), prev=[1, kept_end, 112, 16]) == "valid"
    return device, frames


def test_a_power_cut_is_written_off_within_the_bound_the_birth_states():
    verifier = make_verifier()
    device, _ = power_cut(verifier, delivered=70, kept_end=0)
    entry = device_entry(verifier)
    # 70-95 surely destroyed, 96-111 perhaps; the truth (30: seqs 70-99) lies in between.
    assert (entry["lost_on_device"], entry["lost_on_device_max"], entry["lost"]) == (26, 42, 0)
    assert entry["valid"] + entry["lost"] + entry["lost_on_device"] <= 100 <= \
        entry["valid"] + entry["lost"] + entry["lost_on_device_max"]
    link = build_report(verifier)["links"]["wifi"]
    assert (link["lost_on_device"], link["lost"]) == (26, 0)
    # Another connect of the same boot repeats the birth: nothing is counted twice.
    device.status(BIRTH, prev=[1, 0, 112, 16])
    assert device_entry(verifier)["lost_on_device"] == 26


def test_frames_kept_on_flash_come_first_then_the_rest_is_written_off():
    verifier = make_verifier()
    device, frames = power_cut(verifier, delivered=60, kept_end=80)  # 60-79 on flash, 80-99 were in RAM
    assert device_entry(verifier)["lost_on_device"] == 0  # the kept frames are still on their way
    device.frames = frames
    # 79 never arrives: lost on the link between device and hub.
    assert set(device.deliver(range(60, 79))) == {"valid"}
    device.status(HEARTBEAT, queued=0)
    entry = device_entry(verifier)
    assert (entry["lost"], entry["lost_on_device"], entry["lost_on_device_max"]) == (1, 16, 32)


def test_a_written_off_frame_that_arrives_after_all_is_taken_back():
    verifier = make_verifier()
    device, frames = power_cut(verifier, delivered=70, kept_end=0)
    device.frames = frames
    assert device.deliver([70]) == ["valid"]  # it was in flight when the power went
    entry = device_entry(verifier)
    assert (entry["lost_on_device"], entry["lost"], entry["valid"]) == (25, 0, 71)


def test_a_pending_write_off_survives_a_hub_restart():
    verifier = make_verifier()
    device, frames = power_cut(verifier, delivered=60, kept_end=80)
    restarted = make_verifier()
    restarted.restore_device("pump-1", verifier.device_state("pump-1"))
    restarted.restore_status("pump-1", verifier.status["pump-1"].to_json())
    device.verifier, device.frames = restarted, frames
    device.deliver(range(60, 80))
    device.status(HEARTBEAT, queued=0)
    entry = device_entry(restarted)
    assert (entry["lost"], entry["lost_on_device"], entry["lost_on_device_max"]) == (0, 16, 32)


def test_losses_before_the_first_frame_seen_are_link_loss_only_after_a_birth():
    with_birth = make_verifier()
    device = Device(with_birth, epoch=4)
    device.status(BIRTH)
    device.seal(10)
    device.deliver(range(5, 10))
    entry = device_entry(with_birth)
    assert (entry["lost"], entry["lost_unknown"]) == (5, 0)

    without = make_verifier()
    device = Device(without, epoch=4)
    device.seal(10)
    device.deliver(range(5, 10))
    entry = device_entry(without)
    assert (entry["lost"], entry["lost_unknown"]) == (0, 5)
    device.deliver([3])  # an earlier frame, late: 3 is now known, 4 lost, 0-2 still unknown
    entry = device_entry(without)
    assert (entry["lost"], entry["lost_unknown"], entry["reordered"]) == (1, 3, 1)
