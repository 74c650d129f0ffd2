"""Frame overhead (every byte but the payload) per tag length and form, against OSCORE and COSE_Mac0."""

import json

from agent import Sealer
from agent.cipher import RecordCipher
from shared.aes import ecb_block

KEY = bytes(32)
REFERENCES = {"oscore_8_byte_tag": "11-15", "cose_mac0_hmac256_64": "about 17"}


def overhead(tag_len, epoch, seq, timestamp=None, compact=False, encrypt=False):
    cipher = RecordCipher(KEY, 0, ecb_block) if encrypt else None
    sealer = Sealer("bench", KEY, tag_len=tag_len, epoch=epoch, link="lora" if compact else "wifi", compact=compact,
                    cipher=cipher)
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
    # The compact form (no link code, no CRC) for links whose own check drops damaged frames.
    print(json.dumps({
        "figure": "overhead_compact_bytes",
        "value": overhead(8, 127, 2**14 - 1, compact=True),  # the bound: epoch < 128, seq < 16,384
        "target": "<= 13",
        "tag16": overhead(16, 127, 2**14 - 1, compact=True),
        "record_bytes_in_a_51_byte_uplink": 51 - overhead(8, 127, 2**14 - 1, compact=True),
        "reference_bytes": REFERENCES,
    }))
    # Encryption (AES-128-CTR, counter from the frame's own epoch and seq): nothing added.
    plain, sealed = overhead(16, 2**14 - 1, 2**21 - 1), overhead(16, 2**14 - 1, 2**21 - 1, encrypt=True)
    print(json.dumps({
        "figure": "overhead_encrypted_bytes",
        "value": sealed,
        "target": f"== {plain} (the unencrypted overhead: 0 extra)",
        "extra_bytes": sealed - plain,
        "compact_tag8_extra_bytes": overhead(8, 127, 2**14 - 1, compact=True, encrypt=True)
        - overhead(8, 127, 2**14 - 1, compact=True),
        "reference_bytes": {"oscore_extra_for_encryption": "11-15"},
    }))


if __name__ == "__main__":
    main()
