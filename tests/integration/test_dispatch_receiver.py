"""The loopback demo receiver itself: scripted behaviour, signature checks, dedupe, down switch."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest
import requests

from relay.local.receiver import Behaviour, Receiver
from relay.logic import webhook_signing

pytestmark = pytest.mark.integration
SECRET = "whsec_" + base64.b64encode(b"receiver-test-signing-key-0001").decode()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(signing_secrets={"/signed": [SECRET]}) as running:
        yield running


def _signed(msg_id: str, body: bytes, secret: str = SECRET) -> dict[str, str]:
    ts = int(time.time())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": webhook_signing.sign(msg_id, ts, body, [secret]),
        "Content-Type": "application/json",
    }


def test_status_sequence_then_default_and_429_carries_retry_after(receiver: Receiver) -> None:
    receiver.behaviour = Behaviour(status_sequence=[503, 429, 200], retry_after_seconds=7)
    answers = [requests.post(f"{receiver.url}/x", data=b"{}", timeout=5) for _ in range(4)]
    assert [a.status_code for a in answers] == [503, 429, 200, 200]
    assert answers[1].headers["Retry-After"] == "7"


def test_fault_rate_one_with_timeouts_hangs_past_the_client_timeout(receiver: Receiver) -> None:
    receiver.behaviour = Behaviour(fault_rate=1.0, faults=("timeout",), hang_seconds=3)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{receiver.url}/x", data=b"{}", timeout=(1, 0.3))
    assert receiver.requests[0].answered is None


def test_down_drops_connections_and_up_recovers(receiver: Receiver) -> None:
    receiver.behaviour.up = False
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(f"{receiver.url}/x", data=b"{}", timeout=2)
    receiver.behaviour.up = True
    assert requests.post(f"{receiver.url}/x", data=b"{}", timeout=2).status_code == 200


def test_a_head_gets_the_steady_answer_and_is_neither_recorded_nor_takes_a_scripted_status(
    receiver: Receiver,
) -> None:
    # Given a receiver whose next delivery is scripted to get 503
    receiver.behaviour = Behaviour(status_sequence=[503])

    # When `relay targets check` sends it a HEAD
    head = requests.head(f"{receiver.url}/x", timeout=5)

    # Then it gets the receiver's steady answer, nothing is recorded, and the 503 is still the next
    assert (head.status_code, head.content) == (200, b"")
    assert receiver.requests == []
    assert requests.post(f"{receiver.url}/x", data=b"{}", timeout=5).status_code == 503
    # and a receiver that is down drops the HEAD too
    receiver.behaviour.up = False
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.head(f"{receiver.url}/x", timeout=2)


def test_signatures_are_checked_per_path_and_deliveries_deduplicated(receiver: Receiver) -> None:
    body = b'{"deliveryId":"d-1","formatVersion":"2.1","sourceEvent":{"a":1}}'
    forged = requests.post(
        f"{receiver.url}/signed", data=body, headers=_signed("d-1", body, SECRET[:-4] + "AAA=")
    )
    first = requests.post(f"{receiver.url}/signed", data=body, headers=_signed("d-1", body))
    again = requests.post(f"{receiver.url}/signed", data=body, headers=_signed("d-1", body))
    assert (forged.status_code, first.status_code, again.status_code) == (401, 200, 200)
    assert again.json()["duplicate"] is True
    assert receiver.unique_delivery_ids == {"d-1"}
    assert [d.duplicate for d in receiver.deliveries] == [False, True]
    assert receiver.deliveries[0].signature_valid and receiver.deliveries[0].event == {"a": 1}


def test_a_path_key_matches_the_request_line_however_it_spells_the_path() -> None:
    # Given a receiver whose secret is keyed by a path as a target URL writes it
    with Receiver(signing_secrets={"/hooks/crm ü": [SECRET]}) as running:
        body = b'{"deliveryId":"d-2","formatVersion":"2.1","sourceEvent":{"a":2}}'

        # When a delivery arrives percent-encoded, with a query
        answer = requests.post(
            f"{running.url}/hooks/crm%20%C3%BC?team=crm", data=body, headers=_signed("d-2", body)
        )

        # Then its signature was checked against that secret (unkeyed, it would not be checked at all)
        assert answer.status_code == 200
        assert running.deliveries[0].signature_valid is True


def test_a_receiver_that_keeps_no_requests_still_verifies_and_counts_what_it_accepted() -> None:
    # Given a receiver like relay local serve's, which runs for hours and whose records nobody reads
    with Receiver(signing_secrets={"/signed": [SECRET]}, keep_requests=False) as lean:
        body = b'{"deliveryId": "d"}'
        # When it gets valid deliveries (one of them twice) and one with a wrong signature
        url = f"{lean.url}/signed"
        answers = [
            requests.post(url, data=body, headers=_signed(msg_id, body), timeout=5).status_code
            for msg_id in ("msg_1", "msg_2", "msg_2")
        ]
        wrong_key = _signed("msg_3", body, secret=SECRET[:-4] + "AAA=")
        forged = requests.post(url, data=body, headers=wrong_key, timeout=5)
        # Then it answers as a keeping receiver does and counts the accepted webhook-ids...
        assert answers == [200, 200, 200]
        assert forged.status_code == 401
        assert lean.unique_delivery_ids == {"msg_1", "msg_2"}
        # ...but keeps none of the requests (each kept one costs ~7 kB for the receiver's lifetime)
        assert lean.requests == []
