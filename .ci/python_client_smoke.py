"""An integrator's first hour, through the client openapi-python-client
generates from docs/openapi.json (.ci/python-client), against a live
gateway in front of the simulator: a shipment, a label bought under a key
and replayed, a key carried in the body, a conflict, an order placed and
read back, and the admin search with its typed filters.

Usage: python_client_smoke.py BASE_URL PARTNER_KEY ADMIN_TOKEN
"""

import datetime
import sys
import uuid

from waybill_client import AuthenticatedClient
from waybill_client.api.admin import search_events
from waybill_client.api.integrators import (
    buy_label,
    cancel_shipment,
    create_order,
    create_shipment,
    get_order,
    get_shipment,
)
from waybill_client.models import (
    Address,
    AddressCountry,
    CancelRequest,
    Error,
    EventList,
    Label,
    LabelFormat,
    LabelRequest,
    NewOrder,
    NewOrderItemsItem,
    NewShipment,
    Order,
    OrderCreated,
    Parcel,
    Shipment,
)


def check(condition, what):
    if not condition:
        raise SystemExit(f"python client smoke: {what}")


def replayed(response):
    return response.headers.get("Idempotent-Replayed")


def address():
    return Address(
        name="Ada",
        street1="1 Main St",
        city="Berlin",
        postal_code="10115",
        country=AddressCountry.DE,
    )


def new_shipment(order_id):
    return NewShipment(
        order_id=order_id,
        carrier="ups",
        service="ground",
        from_=address(),
        to=address(),
        parcels=[Parcel(weight_grams=500, length_cm=20, width_cm=15, height_cm=10)],
    )


def main(base_url, partner_key, admin_token):
    run = uuid.uuid4().hex[:12]
    client = AuthenticatedClient(base_url=base_url, token=partner_key)

    # A shipment under a header key; the retry is the first answer, replayed.
    key = f"ship-{run}"
    first = create_shipment.sync_detailed(
        client=client, body=new_shipment(f"o-{run}"), idempotency_key=key
    )
    check(first.status_code == 201, f"create shipment: {first.status_code} {first.content!r}")
    check(isinstance(first.parsed, Shipment), "create shipment: not a Shipment")
    shipment = first.parsed
    check(replayed(first) is None, "a fresh shipment is marked replayed")
    again = create_shipment.sync_detailed(
        client=client, body=new_shipment(f"o-{run}"), idempotency_key=key
    )
    check(again.status_code == 201 and again.content == first.content, "replay differs")
    check(replayed(again) == "true", f"replay header: {replayed(again)!r}")

    # The same key with another request is a conflict, typed as an Error.
    other = create_shipment.sync_detailed(
        client=client, body=new_shipment(f"o-{run}-other"), idempotency_key=key
    )
    check(other.status_code == 409, f"conflict: {other.status_code}")
    check(isinstance(other.parsed, Error), "conflict: not an Error")
    check(other.parsed.error.code.value == "IDEMPOTENCY_CONFLICT", "conflict code")

    # A label under a key, replayed byte for byte with the same label.
    label_key = f"label-{run}"
    bought = buy_label.sync_detailed(
        shipment.shipment_id,
        client=client,
        body=LabelRequest(format_=LabelFormat.ZPL),
        idempotency_key=label_key,
    )
    check(bought.status_code == 201, f"buy label: {bought.status_code} {bought.content!r}")
    check(isinstance(bought.parsed, Label), "buy label: not a Label")
    check(bought.parsed.format_ == "ZPL", f"label format: {bought.parsed.format_!r}")
    rebought = buy_label.sync_detailed(
        shipment.shipment_id,
        client=client,
        body=LabelRequest(format_=LabelFormat.ZPL),
        idempotency_key=label_key,
    )
    check(rebought.content == bought.content, "label replay differs")
    check(replayed(rebought) == "true", "label replay is not marked")
    check(rebought.parsed.label_id == bought.parsed.label_id, "a second label was bought")

    read = get_shipment.sync_detailed(shipment.shipment_id, client=client)
    check(read.status_code == 200 and isinstance(read.parsed, Shipment), "read shipment")
    check(read.parsed.tracking_number == bought.parsed.tracking_number, "tracking number")

    # The key in the body instead of the header: the generated client
    # leaves the header out, and the retry is still the first answer.
    cancel = CancelRequest(idempotency_key=f"cancel-{run}")
    cancelled = cancel_shipment.sync_detailed(shipment.shipment_id, client=client, body=cancel)
    check(cancelled.status_code == 200, f"cancel: {cancelled.status_code} {cancelled.content!r}")
    check(cancelled.parsed.status == "CANCELLED", f"cancel status: {cancelled.parsed.status}")
    recancelled = cancel_shipment.sync_detailed(shipment.shipment_id, client=client, body=cancel)
    check(replayed(recancelled) == "true", "cancel replay is not marked")
    check(recancelled.content == cancelled.content, "cancel replay differs")

    # An order placed under a key and read back.
    order_id = f"order-{run}"
    placed = create_order.sync_detailed(
        client=client,
        body=NewOrder(
            order_id=order_id,
            customer_id=f"c-{run}",
            amount_cents=1299,
            currency="EUR",
            items=[NewOrderItemsItem(sku="SKU-1", quantity=1)],
            ship_to=address(),
        ),
        idempotency_key=f"order-{run}",
    )
    check(placed.status_code == 201, f"order: {placed.status_code} {placed.content!r}")
    check(isinstance(placed.parsed, OrderCreated), "order: not an OrderCreated")
    order = get_order.sync_detailed(order_id, client=client)
    check(order.status_code == 200 and isinstance(order.parsed, Order), "read order")
    check(order.parsed.order_id == order_id, "read order id")
    check(order.parsed.amount_cents == 1299, "read order amount")

    # The admin search, its filters as plain types.
    admin = AuthenticatedClient(base_url=base_url, token=admin_token)
    since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    found = search_events.sync_detailed(client=admin, since=since, limit=10)
    check(found.status_code == 200, f"search: {found.status_code} {found.content!r}")
    check(isinstance(found.parsed, EventList), "search: not an EventList")

    print(
        f"python client smoke: shipment {shipment.shipment_id}, label "
        f"{bought.parsed.label_id}, order {order_id}: all answers as described"
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
