# Status messages: what a device says about itself on linkseal/v1/<device>/status, sealed
# with Sealer.seal_status. One JSON object (docs/protocol.md, "Status messages"):
#   type          "birth" (every connect), "death" (the MQTT last will), "heartbeat"
#   next_seq      the sequence number the next record will carry (in the frame's epoch)
#   sent          [epoch, seq] of the newest record the broker has taken, if any: the hub
#                 counts every record up to it that never arrived as lost (tail loss)
#   queued        records waiting on the device
#   source_drops  records the device dropped itself (its queue was full), since provisioning
#   refused       records the source gave that were too long for the link (never sealed),
#                 since the device started; present when not 0
#   fw, reset_cause   birth only
#   heartbeat_s, record_interval_s   when known: the seconds between its heartbeats and between
#                 its records (the hub's watch: silent after 3 heartbeats missed); in every status,
#                 so a birth lost on the link leaves the hub guessing for one heartbeat at most
#   prev          birth only, when known: [epoch, kept_end, sealed_end, lease] of the epoch
#                 before: every seq below sealed_end - lease was sealed, none from sealed_end
#                 on, and the frames below kept_end still queued here are on their way; the
#                 hub counts the rest as destroyed by the reset (firmware/device/sealmark.py)
#   flash_writes  files the agent wrote or replaced since it started (flash wear), if known
#   too_large     of source_drops: frames sealed but too long for the link's current data rate
#                 (LoRaWAN, after ADR lowered it), dropped unsent, since the device started
#
# Devices in the compact form (LoRaWAN: 51-byte uplinks) send the same fields in a few bytes
# (agent/compact_status.py; docs/protocol.md "Compact status"): no fw, no flash_writes.
import json

FIRMWARE_VERSION = "0.2.0"
BIRTH = "birth"
DEATH = "death"
HEARTBEAT = "heartbeat"


KINDS = (BIRTH, DEATH, HEARTBEAT)  # compact type byte: index + 1
RESET_CAUSES = ("unknown", "power_on", "hard_reset", "watchdog", "deep_sleep", "soft_reset")
COMPACT_SENT = 1  # compact flags byte: sent follows
COMPACT_PREV = 2  # prev follows


def status_payload(kind, sealer, queued, source_drops, sent=None, reset_cause=None, refused=0, prev=None,
                   flash_writes=None, too_large=0, every=None):
    # every: (heartbeat_s, record_interval_s or None), the device's pace
    doc = {"type": kind, "next_seq": sealer.seq, "queued": queued, "source_drops": source_drops}
    if refused:
        doc["refused"] = refused
    if too_large:
        doc["too_large"] = too_large
    if flash_writes is not None:
        doc["flash_writes"] = flash_writes
    if sent is not None:
        doc["sent"] = [sent[0], sent[1]]
    if kind == BIRTH:
        doc["fw"] = FIRMWARE_VERSION
        doc["reset_cause"] = reset_cause or "unknown"
        if prev is not None:
            doc["prev"] = list(prev)
    if every is not None:
        doc["heartbeat_s"] = every[0]
        if every[1]:
            doc["record_interval_s"] = every[1]
    return json.dumps(doc).encode()
