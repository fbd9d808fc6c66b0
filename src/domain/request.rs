//! What an integrator sends to create a shipment, parsed once into types
//! that cannot be invalid (GUARANTEES.md: "The integrator API"). Pure.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ids::OrderId;

use crate::domain::field::{FieldIssue, UNSTORABLE, unstorable};

/// ISO 3166-1 alpha-2, as assigned (249 codes), sorted for binary search.
pub const COUNTRIES: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub name: String,
    pub street1: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub street2: Option<String>,
    pub city: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    pub postal_code: String,
    pub country: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parcel {
    pub weight_grams: u64,
    pub length_cm: u64,
    pub width_cm: u64,
    pub height_cm: u64,
}

/// What is shipped, how and where: all a shipment holds of its request
/// besides the integrator's order id. Kept on the shipment record (older
/// records also hold `order_id` here, which reading passes over).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentDetails {
    pub carrier: String,
    pub service: String,
    pub from: Address,
    pub to: Address,
    pub parcels: Vec<Parcel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

impl Address {
    fn example() -> Address {
        Address {
            name: "A".into(),
            street1: "1 Main St".into(),
            street2: None,
            city: "C".into(),
            state: None,
            postal_code: "1".into(),
            country: "DE".into(),
            phone: None,
        }
    }
}

impl ShipmentDetails {
    /// One parcel between two addresses, for shipments made outside the
    /// API: the load generator's, and tests'.
    pub fn example(carrier: &str) -> ShipmentDetails {
        ShipmentDetails {
            carrier: carrier.into(),
            service: "standard".into(),
            from: Address::example(),
            to: Address::example(),
            parcels: vec![Parcel {
                weight_grams: 500,
                length_cm: 1,
                width_cm: 1,
                height_cm: 1,
            }],
            reference: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewShipment {
    pub order_id: OrderId,
    pub details: ShipmentDetails,
}

/// Longest accepted text field, in characters.
const MAX_TEXT: usize = 255;

/// A number with no fractional part, as JSON Schema counts integers:
/// `5`, `5.0` and `5e0` are all 5.
pub fn whole_number(n: &serde_json::Number) -> Option<u64> {
    if let Some(v) = n.as_u64() {
        return Some(v);
    }
    let text = n.to_string();
    if let Some((whole, fraction)) = text.split_once('.')
        && !fraction.is_empty()
        && fraction.bytes().all(|b| b == b'0')
    {
        return whole.parse().ok();
    }
    // An exponent: exact as a float for every whole number it can be.
    n.as_f64()
        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 18_446_744_073_709_551_616.0)
        .map(|f| f as u64)
}

/// Blank: nothing but Unicode White_Space. Languages disagree at the
/// edges (ECMA's `\s` takes U+FEFF but not U+0085; Python's `isspace`
/// also takes U+001C to U+001F), so docs/openapi.json spells this set out
/// as a character class instead of writing `\S`.
fn blank(s: &str) -> bool {
    s.chars().all(char::is_whitespace)
}

struct Reader<'a> {
    issues: &'a mut Vec<FieldIssue>,
}

/// The body as a JSON object, or the one issue that it is not.
fn object(body: &Value) -> Result<&serde_json::Map<String, Value>, Vec<FieldIssue>> {
    match body {
        Value::Object(obj) => Ok(obj),
        _ => Err(vec![FieldIssue::new("", "the body must be a JSON object")]),
    }
}

impl<'a> Reader<'a> {
    fn new(issues: &'a mut Vec<FieldIssue>) -> Reader<'a> {
        Reader { issues }
    }
}

impl Reader<'_> {
    fn text(
        &mut self,
        obj: &Map<String, Value>,
        base: &str,
        key: &str,
        required: bool,
    ) -> Option<String> {
        let field = format!("{base}/{key}");
        match obj.get(key) {
            None | Some(Value::Null) if !required => None,
            None | Some(Value::Null) => {
                self.issues.push(FieldIssue::new(field, "missing"));
                None
            }
            Some(Value::String(s)) if blank(s) => {
                self.issues
                    .push(FieldIssue::new(field, "must not be empty"));
                None
            }
            Some(Value::String(s)) if unstorable(s) => {
                self.issues.push(FieldIssue::new(field, UNSTORABLE));
                None
            }
            Some(Value::String(s)) if s.chars().count() > MAX_TEXT => {
                self.issues.push(FieldIssue::new(
                    field,
                    format!("longer than {MAX_TEXT} characters"),
                ));
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.issues.push(FieldIssue::new(field, "must be a string"));
                None
            }
        }
    }

    fn positive(&mut self, obj: &Map<String, Value>, base: &str, key: &str) -> Option<u64> {
        let field = format!("{base}/{key}");
        match obj.get(key) {
            None | Some(Value::Null) => {
                self.issues.push(FieldIssue::new(field, "missing"));
                None
            }
            Some(Value::Number(n)) => match whole_number(n) {
                Some(v) if v > 0 => Some(v),
                _ => {
                    self.issues
                        .push(FieldIssue::new(field, "must be a positive integer"));
                    None
                }
            },
            Some(_) => {
                self.issues
                    .push(FieldIssue::new(field, "must be a positive integer"));
                None
            }
        }
    }

    fn at_most(&mut self, value: Option<u64>, field: &str, max: u64) -> Option<u64> {
        match value {
            Some(v) if v > max => {
                self.issues
                    .push(FieldIssue::new(field, format!("must be at most {max}")));
                None
            }
            v => v,
        }
    }

    fn address(&mut self, obj: &Map<String, Value>, key: &str) -> Option<Address> {
        let base = format!("/{key}");
        let Some(v) = obj.get(key) else {
            self.issues.push(FieldIssue::new(base, "missing"));
            return None;
        };
        let Value::Object(a) = v else {
            self.issues.push(FieldIssue::new(base, "must be an object"));
            return None;
        };
        let name = self.text(a, &base, "name", true);
        let street1 = self.text(a, &base, "street1", true);
        let street2 = self.text(a, &base, "street2", false);
        let city = self.text(a, &base, "city", true);
        let state = self.text(a, &base, "state", false);
        let postal_code = self.text(a, &base, "postal_code", true);
        let phone = self.text(a, &base, "phone", false);
        let country = self.text(a, &base, "country", true);
        let country = match country {
            Some(c) if COUNTRIES.binary_search(&c.as_str()).is_ok() => Some(c),
            Some(_) => {
                self.issues.push(FieldIssue::new(
                    format!("{base}/country"),
                    "must be an ISO 3166-1 alpha-2 code, like \"DE\"",
                ));
                None
            }
            None => None,
        };
        Some(Address {
            name: name?,
            street1: street1?,
            street2,
            city: city?,
            state,
            postal_code: postal_code?,
            country: country?,
            phone,
        })
    }
}

impl NewShipment {
    /// Every bad field is reported, each under its JSON pointer.
    pub fn parse(body: &Value) -> Result<NewShipment, Vec<FieldIssue>> {
        let obj = object(body)?;
        let mut issues = Vec::new();
        let mut r = Reader::new(&mut issues);
        let order_id = r.text(obj, "", "order_id", true);
        let carrier = r.text(obj, "", "carrier", true);
        let service = r.text(obj, "", "service", true);
        let from = r.address(obj, "from");
        let to = r.address(obj, "to");
        let reference = r.text(obj, "", "reference", false);
        let mut parcels = Vec::new();
        match obj.get("parcels") {
            Some(Value::Array(items)) if !items.is_empty() => {
                for (i, item) in items.iter().enumerate() {
                    let base = format!("/parcels/{i}");
                    let Value::Object(p) = item else {
                        r.issues.push(FieldIssue::new(base, "must be an object"));
                        continue;
                    };
                    let parcel = (
                        r.positive(p, &base, "weight_grams"),
                        r.positive(p, &base, "length_cm"),
                        r.positive(p, &base, "width_cm"),
                        r.positive(p, &base, "height_cm"),
                    );
                    if let (Some(weight_grams), Some(length_cm), Some(width_cm), Some(height_cm)) =
                        parcel
                    {
                        parcels.push(Parcel {
                            weight_grams,
                            length_cm,
                            width_cm,
                            height_cm,
                        });
                    }
                }
            }
            Some(Value::Array(_)) => r
                .issues
                .push(FieldIssue::new("/parcels", "must hold at least one parcel")),
            None | Some(Value::Null) => r.issues.push(FieldIssue::new("/parcels", "missing")),
            Some(_) => r
                .issues
                .push(FieldIssue::new("/parcels", "must be an array")),
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(NewShipment {
            order_id: OrderId::from(order_id.expect("checked")),
            details: ShipmentDetails {
                carrier: carrier.expect("checked"),
                service: service.expect("checked"),
                from: from.expect("checked"),
                to: to.expect("checked"),
                parcels,
                reference,
            },
        })
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub sku: String,
    pub quantity: u64,
}

/// What an integrator sends to create an order (GUARANTEES.md: "The integrator API"), kept whole
/// on the order's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrder {
    pub order_id: OrderId,
    pub customer_id: String,
    pub amount_cents: u64,
    /// ISO 4217, upper case.
    pub currency: String,
    pub items: Vec<Item>,
    pub ship_to: Address,
}

/// Order lines accepted at most.
const MAX_ITEMS: usize = 100;
/// Bounds that keep every amount and count exact in a JSON number and in
/// the signed 64-bit integers payment and inventory services use (a
/// quantity past `i64::MAX` made the inventory refuse the call, which
/// surfaced as a 503 instead of the 400 it is).
pub const MAX_QUANTITY: u64 = 1_000_000;
pub const MAX_AMOUNT_CENTS: u64 = 1_000_000_000_000;

impl NewOrder {
    /// One line of one SKU for 10.00 EUR, for orders made outside the
    /// API: tests'.
    pub fn example(order_id: &str) -> NewOrder {
        NewOrder {
            order_id: order_id.into(),
            customer_id: "c1".into(),
            amount_cents: 1_000,
            currency: "EUR".into(),
            items: vec![Item {
                sku: "sku-1".into(),
                quantity: 1,
            }],
            ship_to: Address::example(),
        }
    }

    /// Every bad field is reported, each under its JSON pointer.
    pub fn parse(body: &Value) -> Result<NewOrder, Vec<FieldIssue>> {
        let obj = object(body)?;
        let mut issues = Vec::new();
        let mut r = Reader::new(&mut issues);
        let order_id = r.text(obj, "", "order_id", true);
        let customer_id = r.text(obj, "", "customer_id", true);
        let amount_cents = r.positive(obj, "", "amount_cents");
        let amount_cents = r.at_most(amount_cents, "/amount_cents", MAX_AMOUNT_CENTS);
        let currency = match r.text(obj, "", "currency", true) {
            Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) => Some(c),
            Some(_) => {
                r.issues.push(FieldIssue::new(
                    "/currency",
                    "must be an ISO 4217 code, like \"EUR\"",
                ));
                None
            }
            None => None,
        };
        let ship_to = r.address(obj, "ship_to");
        let mut items = Vec::new();
        match obj.get("items") {
            Some(Value::Array(list)) if list.len() > MAX_ITEMS => r.issues.push(FieldIssue::new(
                "/items",
                format!("at most {MAX_ITEMS} items"),
            )),
            Some(Value::Array(list)) if !list.is_empty() => {
                for (i, item) in list.iter().enumerate() {
                    let base = format!("/items/{i}");
                    let Value::Object(it) = item else {
                        r.issues.push(FieldIssue::new(base, "must be an object"));
                        continue;
                    };
                    let sku = r.text(it, &base, "sku", true);
                    let quantity = r.positive(it, &base, "quantity");
                    let quantity = r.at_most(quantity, &format!("{base}/quantity"), MAX_QUANTITY);
                    if let (Some(sku), Some(quantity)) = (sku, quantity) {
                        items.push(Item { sku, quantity });
                    }
                }
            }
            Some(Value::Array(_)) => r
                .issues
                .push(FieldIssue::new("/items", "must hold at least one item")),
            None | Some(Value::Null) => r.issues.push(FieldIssue::new("/items", "missing")),
            Some(_) => r.issues.push(FieldIssue::new("/items", "must be an array")),
        }
        match (order_id, customer_id, amount_cents, currency, ship_to) {
            (
                Some(order_id),
                Some(customer_id),
                Some(amount_cents),
                Some(currency),
                Some(ship_to),
            ) if issues.is_empty() => Ok(NewOrder {
                order_id: OrderId::from(order_id),
                customer_id,
                amount_cents,
                currency,
                items,
                ship_to,
            }),
            _ => Err(issues),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn address() -> Value {
        json!({"name": "Ada", "street1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"})
    }

    fn valid() -> Value {
        json!({"order_id": "o-1", "carrier": "ups", "service": "ground", "from": address(), "to": address(),
                "parcels": [{"weight_grams": 500, "length_cm": 10, "width_cm": 10, "height_cm": 5}]})
    }

    fn issues(body: Value) -> Vec<(String, String)> {
        NewShipment::parse(&body)
            .unwrap_err()
            .into_iter()
            .map(|i| (i.field, i.issue))
            .collect()
    }

    fn order() -> Value {
        json!({"order_id": "o-1", "customer_id": "c-1", "amount_cents": 1999, "currency": "EUR",
               "items": [{"sku": "SKU-1", "quantity": 2}], "ship_to": address()})
    }

    #[test]
    fn a_valid_order_parses_and_every_bad_field_is_named() {
        let o = NewOrder::parse(&order()).unwrap();
        assert_eq!(o.amount_cents, 1999);
        assert_eq!(
            o.items,
            [Item {
                sku: "SKU-1".into(),
                quantity: 2
            }]
        );
        let mut bad = order();
        bad["amount_cents"] = json!(-5);
        bad["currency"] = json!("eur");
        bad["items"] = json!([{"sku": "", "quantity": 0}]);
        bad["ship_to"]["country"] = json!("XX");
        let fields: Vec<String> = NewOrder::parse(&bad)
            .unwrap_err()
            .into_iter()
            .map(|i| i.field)
            .collect();
        assert_eq!(
            fields,
            [
                "/amount_cents",
                "/currency",
                "/ship_to/country",
                "/items/0/sku",
                "/items/0/quantity"
            ]
        );
        assert!(NewOrder::parse(&json!([])).is_err());
        // Regression (found by the API fuzzer): bounded, so that no
        // downstream meets a number it cannot hold.
        let mut big = order();
        big["amount_cents"] = json!(MAX_AMOUNT_CENTS + 1);
        big["items"] = json!([{"sku": "S", "quantity": 9_223_372_036_854_775_808u64}]);
        let issues: Vec<(String, String)> = NewOrder::parse(&big)
            .unwrap_err()
            .into_iter()
            .map(|i| (i.field, i.issue))
            .collect();
        assert_eq!(
            issues,
            [
                (
                    "/amount_cents".into(),
                    format!("must be at most {MAX_AMOUNT_CENTS}")
                ),
                (
                    "/items/0/quantity".into(),
                    format!("must be at most {MAX_QUANTITY}")
                ),
            ]
        );
        let mut edge = order();
        edge["amount_cents"] = json!(MAX_AMOUNT_CENTS);
        edge["items"] = json!([{"sku": "S", "quantity": MAX_QUANTITY}]);
        assert!(NewOrder::parse(&edge).is_ok());
    }

    #[test]
    fn a_valid_request_parses() {
        let s = NewShipment::parse(&valid()).unwrap();
        assert_eq!(s.order_id, "o-1");
        assert_eq!(s.details.parcels.len(), 1);
        assert_eq!(s.details.to.country, "DE");
    }

    #[test]
    fn the_country_list_is_sorted_and_complete() {
        assert!(COUNTRIES.windows(2).all(|w| w[0] < w[1]));
        for c in ["US", "DE", "GB", "JP", "BR", "ZA"] {
            assert!(COUNTRIES.binary_search(&c).is_ok(), "{c}");
        }
        for c in ["UK", "XX", "de", "DEU"] {
            assert!(COUNTRIES.binary_search(&c).is_err(), "{c}");
        }
    }

    /// Regression (found by the API fuzzer against docs/openapi.json):
    /// what the document calls valid is accepted. Integers written as
    /// `5.0` or `5e0` are integers; text is measured in characters, not
    /// bytes; blank means whitespace as clients' `isspace` counts it.
    #[test]
    fn what_the_api_description_calls_valid_is_accepted() {
        let number = |text: &str| whole_number(&serde_json::from_str(text).unwrap());
        assert_eq!(number("5"), Some(5));
        assert_eq!(number("324190460.0"), Some(324_190_460));
        assert_eq!(number("5e0"), Some(5));
        assert_eq!(number("1e16"), Some(10_000_000_000_000_000));
        assert_eq!(number("18446744073709551615"), Some(u64::MAX));
        assert_eq!(number("0.1e1"), Some(1));
        for not_whole in ["5.5", "-1", "-1.0", "1e30"] {
            assert_eq!(number(not_whole), None, "{not_whole}");
        }
        let mut body = valid();
        body["parcels"][0]["weight_grams"] = serde_json::from_str("500.0").unwrap();
        body["reference"] = json!("ü".repeat(255));
        assert!(NewShipment::parse(&body).is_ok());
        body["reference"] = json!("ü".repeat(256));
        assert_eq!(
            issues(body),
            [(
                "/reference".to_string(),
                "longer than 255 characters".to_string()
            )]
        );
        let mut body = valid();
        body["carrier"] = json!("\u{85} \u{3000}\t");
        assert_eq!(
            issues(body),
            [("/carrier".to_string(), "must not be empty".to_string())]
        );
        // U+0000 is refused wherever it is: no store can hold it, and the
        // document's pattern excludes it.
        let mut body = valid();
        body["from"]["street1"] = json!("1 Main\u{0} St");
        assert_eq!(
            issues(body),
            [(
                "/from/street1".to_string(),
                "must not contain U+0000".to_string()
            )]
        );
        // Not White_Space, so not blank, whatever other definitions say.
        for c in ['\u{1f}', '\u{feff}'] {
            let mut body = valid();
            body["carrier"] = json!(c.to_string());
            assert!(NewShipment::parse(&body).is_ok(), "{c:?}");
        }
    }

    #[test]
    fn every_bad_field_is_named_by_its_pointer() {
        let mut body = valid();
        body["order_id"] = json!(7);
        body["from"]["country"] = json!("UK");
        body["to"] = json!("nowhere");
        body["parcels"][0]["weight_grams"] = json!(0);
        body["parcels"][0]["height_cm"] = json!(-1);
        body.as_object_mut().unwrap().remove("carrier");
        assert_eq!(
            issues(body),
            [
                ("/order_id".to_string(), "must be a string".to_string()),
                ("/carrier".into(), "missing".into()),
                (
                    "/from/country".into(),
                    "must be an ISO 3166-1 alpha-2 code, like \"DE\"".into()
                ),
                ("/to".into(), "must be an object".into()),
                (
                    "/parcels/0/weight_grams".into(),
                    "must be a positive integer".into()
                ),
                (
                    "/parcels/0/height_cm".into(),
                    "must be a positive integer".into()
                ),
            ]
        );
        let mut body = valid();
        body["parcels"] = json!([]);
        body["service"] = json!("  ");
        assert_eq!(
            issues(body),
            [
                ("/service".to_string(), "must not be empty".to_string()),
                ("/parcels".into(), "must hold at least one parcel".into()),
            ]
        );
        assert_eq!(
            issues(json!([1])),
            [("".to_string(), "the body must be a JSON object".to_string())]
        );
    }
}
