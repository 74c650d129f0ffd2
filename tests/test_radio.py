"""LoRaWAN radio figures at the hub (hub/core/radio.py): where records were lost (before or
after the device sent them, by the frame counter) and how each gateway hears a device; held
against the ground truth of runs generated here, exhaustively over seeds."""

import random

import pytest

from hub.core.radio import MAX_GATEWAYS, RECORD, RING, STATUS, RadioState, link_figures


def run(seed: int, epochs: int = 3, steps: int = 300):
    """A device's uplinks over several epochs (each reboot joins again: fCnt from 0): records,
    some never sent (a full queue, too long for the data rate), status messages numbered on
    their own, uplinks lost in the air. Each epoch ends with a record and a status message
    that arrive. Returns (uplinks the hub receives, truth)."""
    rng = random.Random(seed)
    received, truth = [], {"lost_after": 0, "lost_before": 0}
    for epoch in range(1, epochs + 1):
        f_cnt, seq, status_seq = 0, 0, 0
        for step in range(steps):
            last = step >= steps - 2  # the epoch ends with a record and a status message that arrive
            if step == steps - 1 or (step < steps - 2 and rng.random() < 0.2):
                kind, number = STATUS, status_seq
                status_seq += 1
            else:
                kind, number = RECORD, seq
                seq += 1
                if rng.random() < 0.1 and not last:  # sealed, never sent
                    truth["lost_before"] += 1
                    continue
            if rng.random() < 0.25 and not last:  # sent, lost in the air
                truth["lost_after"] += 1
            else:
                gateways = [("gw-%d" % g, -100 - 5 * g, 8.0 - 3 * g) for g in range(3) if rng.random() < 0.7]
                received.append((kind, epoch, number, f_cnt, gateways or [("gw-0", -100, 8.0)], 7 + epoch,
                                 "26011b%02x" % epoch))
            f_cnt += 1
    return received, truth


@pytest.mark.parametrize("seed", range(40))
def test_the_split_of_losses_equals_the_ground_truth(seed):
    received, truth = run(seed)
    state = RadioState()
    for uplink in received:
        state.observe(*uplink)
    figures = state.figures()
    assert figures["lost_after_transmission"] == truth["lost_after"]
    assert figures["lost_before_transmission"] == truth["lost_before"]
    assert figures["uplinks"] == len(received)
    # The state survives a restart of the hub (stored with the device's status).
    again = RadioState.from_dict(__import__("json").loads(__import__("json").dumps(state.to_dict())))
    assert again.figures() == figures


def test_a_lost_status_between_a_dropped_record_is_settled_by_the_next_status():
    """Two records 2 apart with one lost uplink between: it was a record or a status message.
    Until a later status message shows none was lost, the hub counts what is sure (0 never sent);
    the next status message's number settles it."""
    state = RadioState()
    state.observe(STATUS, 1, 0, 0, [("gw", -100, 7.0)], 7)  # birth
    state.observe(RECORD, 1, 0, 1, [("gw", -100, 7.0)], 7)
    # seq 1 sealed and never sent; status 1 sent (fCnt 2) and lost in the air
    state.observe(RECORD, 1, 2, 3, [("gw", -100, 7.0)], 7)
    assert (state.lost_after, state.lost_before()) == (1, 0)
    state.observe(STATUS, 1, 2, 4, [("gw", -100, 7.0)], 7)  # status 2: status 1 was lost
    assert (state.lost_after, state.lost_before()) == (1, 1)


def test_a_join_within_an_epoch_and_a_reboot_the_session_outlives():
    state = RadioState()
    for f, seq in enumerate(range(5)):
        state.observe(RECORD, 1, seq, f, [], 7)
    # A join within epoch 1 (the modem lost its session): fCnt restarts; 2 uplinks lost at its head
    state.observe(RECORD, 1, 8, 2, [], 7)
    assert state.lost_after == 2 and state.lost_before() == 0  # seq 5..7: not known where they went
    # The board reboots (epoch 2), the modem keeps its session: fCnt goes on; the birth arrives
    state.observe(STATUS, 2, 0, 4, [], 7)  # fCnt 3 lost: the old epoch's tail
    state.observe(RECORD, 2, 1, 5, [], 7)  # seq 0 of epoch 2 never sent
    assert state.lost_after == 3 and state.lost_before() == 1


def test_gateways_shares_medians_and_bounds():
    state = RadioState()
    for n in range(100):
        heard = [("roof", -90 - n % 3, 9.0)] + ([("far", -118, -7.5)] if n % 4 == 0 else [])
        heard += [("gw-%d" % n, -120, -10.0)]  # a new gateway every time: bounded state
        state.observe(RECORD, 1, n, n, heard, 12 if n % 2 else 7)
    figures = state.figures()
    gateways = figures["gateways"]
    assert len(state.gateways) == MAX_GATEWAYS and gateways["other"]["frames"] == 100 - (MAX_GATEWAYS - 3)
    assert gateways["roof"] == {"frames": 100, "share": 1.0, "rssi_median": -91, "snr_median": 9.0}
    assert gateways["far"]["frames"] == 25 and gateways["far"]["share"] == 0.25
    assert all(len(rssi) <= RING and len(snr) <= RING for _, rssi, snr in state.gateways.values())
    assert figures["spreading_factors"] == {"7": {"frames": 50, "snr_median": 9.0},
                                            "12": {"frames": 50, "snr_median": 9.0}}
    link = link_figures([state, state])
    assert link["uplinks"] == 200 and link["gateways"]["roof"]["frames"] == 200
    assert link["gateways"]["roof"]["share"] == 1.0
