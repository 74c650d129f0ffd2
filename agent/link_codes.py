# Generated from hardware/links/*.toml by `make link-codes`; do not edit.
# name: (wire code, largest payload a frame on this link may carry)
LINKS = {
    "fiber": (1, 1443),
    "twisted-pair": (2, 1443),
    "coax": (3, 1443),
    "wifi": (4, 1443),
    "ble": (5, 187),
    "lora": (6, 165),
    "cellular": (7, 1443),
    "rs485": (8, 199),
}
