"""The RUI3 modem emulator (simulator/lorawan/modem.py), sans-I/O: every answer the firmware's
lorawan transport relies on, in simulated time."""

from simulator.lorawan.modem import RX_WINDOWS_S, Rui3Modem


def joined_modem(**options):
    sent = []
    modem = Rui3Modem(sent.append, **options)
    assert modem.receive(b"AT\r\nAT+NJS=?\r\n", 0.0) == ["OK", "AT+NJS=0", "OK"]
    assert modem.command("AT+SEND=10:00", 0.0) == ["AT_NO_NETWORK_JOINED"]
    assert modem.command("AT+JOIN=1:0:10:8", 0.0) == ["OK"]
    assert modem.due(1.0) == [] and modem.command("AT+JOIN=1:0:10:8", 1.0) == ["AT_BUSY_ERROR"]
    assert modem.due(6.0) == ["+EVT:JOINED"] and modem.command("AT+NJS=?", 6.0) == ["AT+NJS=1", "OK"]
    return modem, sent


def test_send_busy_windows_and_the_duty_cycle():
    modem, sent = joined_modem(data_rate=5)
    assert modem.command("AT+SEND=10:" + "ab" * 51, 10.0) == ["OK"]
    uplink = sent[-1]
    assert (uplink.f_cnt, uplink.f_port, uplink.payload, uplink.spreading_factor) == (0, 10, b"\xab" * 51, 7)
    assert round(uplink.airtime_s, 4) == 0.118 and uplink.dev_addr == modem.dev_addr
    # Busy while the uplink and both receive windows last; TX_DONE after them.
    assert modem.command("AT+SEND=10:00", 10.5) == ["AT_BUSY_ERROR"]
    done = 10.0 + uplink.airtime_s + RX_WINDOWS_S
    assert modem.due(done - 0.01) == [] and modem.due(done) == ["+EVT:TX_DONE"]
    # 1% duty cycle: the band is closed until 100 x the airtime after the uplink began.
    assert modem.command("AT+SEND=10:00", done + 0.1) == ["AT_DUTYCYCLE_RESTRICTED"]
    assert modem.command("AT+SEND=11:00", 10.0 + uplink.airtime_s / 0.01) == ["OK"]
    assert sent[-1].f_cnt == 1 and modem.counts == {"uplinks": 2, "busy": 1, "duty_cycle": 1, "too_long": 0}


def test_bad_sends_and_data_rates_are_refused():
    modem, sent = joined_modem(data_rate=0, duty_cycle=0.0)
    for bad in ("AT+SEND=10:" + "00" * 52, "AT+SEND=0:00", "AT+SEND=224:00", "AT+SEND=10:zz", "AT+SEND=x:00"):
        assert modem.command(bad, 10.0) == ["AT_PARAM_ERROR"], bad
    assert modem.command("AT+DR=6", 10.0) == ["AT_PARAM_ERROR"] and modem.command("AT+DR=3", 10.0) == ["OK"]
    assert modem.command("AT+DR=?", 10.0) == ["AT+DR=3", "OK"]
    assert modem.command("AT+SEND=10:" + "00" * 115, 10.0) == ["OK"] and sent[-1].spreading_factor == 9
    assert modem.command("AT+FOO", 10.0) == ["AT_ERROR"]


def test_a_join_starts_a_new_session():
    modem, sent = joined_modem(duty_cycle=0.0, data_rate=5)
    first = modem.dev_addr
    modem.command("AT+SEND=10:01", 10.0)
    modem.due(20.0)
    modem.command("AT+JOIN=1:0:10:8", 20.0)
    assert modem.command("AT+SEND=10:01", 21.0) == ["AT_NO_NETWORK_JOINED"]  # while it joins again
    modem.due(26.0)
    modem.command("AT+SEND=10:02", 26.0)
    assert sent[-1].f_cnt == 0 and sent[-1].dev_addr != first
    modem.joinable = False  # no gateway answers the next join
    modem.due(40.0)
    modem.command("AT+JOIN=1:0:10:8", 40.0)
    assert modem.due(46.0) == ["+EVT:JOIN_FAILED_RX_TIMEOUT"]
