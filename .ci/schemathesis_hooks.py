"""The two server rules for .ci/schemathesis that JSON Schema cannot say.

docs/openapi.json describes each on its own terms (the Idempotency-Key
header and the body's idempotency_key field as optional, an admin filter as
its real type), so generated clients get plain types; the rules that join
them live in the descriptions, and these hooks keep the generated cases
true to them rather than turning the checks off.
"""

import uuid

import schemathesis
from schemathesis.core.parameters import ParameterLocation

# The operations that take an idempotency key, in the header or the body.
KEYED = {
    ("POST", "/v1/shipments"),
    ("POST", "/v1/shipments/{shipment_id}/label"),
    ("POST", "/v1/shipments/{shipment_id}/cancel"),
    ("POST", "/v1/orders"),
}


def _key_header(headers):
    return next((name for name in headers if name.lower() == "idempotency-key"), None)


@schemathesis.hook
def map_case(context, case):
    """One of the two places carries the key (400 IDEMPOTENCY_KEY_REQUIRED
    when neither does), and one is enough: two generated keys never agree
    (400 IDEMPOTENCY_KEY_INVALID). A fresh key goes in the header when
    neither has one; when both do, the body's stays, so both paths are
    exercised."""
    operation = case.operation
    if (operation.method.upper(), operation.path) not in KEYED:
        return case
    # A case that breaks the headers on purpose (one without Authorization,
    # say) is left as generated: it is to be refused whatever the key.
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER):
        return case
    headers = dict(case.headers or {})
    header = _key_header(headers)
    in_body = isinstance(case.body, dict) and "idempotency_key" in case.body
    if header is not None and in_body:
        del headers[header]
        case.headers = headers
    elif header is None and not in_body:
        headers["Idempotency-Key"] = uuid.uuid4().hex
        case.headers = headers
    return case


@schemathesis.hook
def filter_case(context, case):
    """The admin search takes an empty filter as absent (the console's form
    sends its blank fields). A case meant to be refused is dropped when it
    carries an empty value: if that value is its only fault, the server
    rightly accepts it, and the case does not say which value it broke."""
    operation = case.operation
    if (operation.method.upper(), operation.path) != ("GET", "/admin/events"):
        return True
    meta = case.meta
    if meta is None or not meta.is_negative_at(ParameterLocation.QUERY):
        return True
    values = []
    for value in (case.query or {}).values():
        values.extend(value if isinstance(value, list) else [value])
    return all(value != "" for value in values)
