"""Frame overhead (every byte but the payload) per tag length, against OSCORE and COSE_Mac0."""

import json

from agent import Sealer

KEY = bytes(32)
REFERENCES = {"oscore_8_byte_tag": "11-15", "cose_mac0_hmac256_64": "about 17"}


def overhead(tag_len, epoch, seq, timestamp=None):
    sealer = Sealer("bench", KEY, tag_len=tag_len, epoch=epoch)
    sealer.seq = seq
    return len(sealer.seal(b"p" * 10, timestamp)) - 10


def main():
    for tag_len, target in ((8, 20), (16, 28), (32, None)):
        print(json.dumps({
            "figure": f"overhead_bytes_tag{tag_len}",
            "value": overhead(tag_len, 2**14 - 1, 2**21 - 1),  # the bound: epoch < 2^14, seq < 2^21
            "target": f"<= {target}" if target else None,
            "first_frames_of_an_epoch": overhead(tag_len, 3, 5),
            "with_device_timestamp": overhead(tag_len, 2**14 - 1, 2**21 - 1, 1_800_000_000_000),
            "reference_bytes": REFERENCES,
        }))


if __name__ == "__main__":
    main()
