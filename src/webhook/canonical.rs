//! RFC 8785 (JSON Canonicalization Scheme) serialisation, with one
//! documented departure: integers are written exactly as sent instead of
//! being rounded through a double, so two ids that differ only past 2^53 are
//! not merged into one event (GUARANTEES.md: "Event identity").
//!
//! serde_json's `arbitrary_precision` feature keeps each number's text, which
//! is what makes exact integers possible here.

use serde_json::{Number, Value};

/// Appends the canonical form of `value` to `out`.
pub fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // JCS orders members by the UTF-16 code units of their names,
            // which differs from UTF-8 byte order above U+FFFF.
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push(b'{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write(v, out);
            }
            out.push(b'}');
        }
    }
}

pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write(value, &mut out);
    out
}

/// The integer text of a number, when it is written as an integer.
pub fn integer_text(n: &Number) -> Option<String> {
    let text = n.to_string();
    let digits = text.strip_prefix('-').unwrap_or(&text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // JSON forbids leading zeros, so the only alias left is "-0".
    if digits.bytes().all(|b| b == b'0') {
        return Some("0".to_string());
    }
    Some(text)
}

fn write_number(n: &Number, out: &mut Vec<u8>) {
    if let Some(int) = integer_text(n) {
        out.extend_from_slice(int.as_bytes());
        return;
    }
    // A fraction or an exponent: ECMAScript's Number-to-string, as JCS says.
    let text = n.to_string();
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => {
            let mut buf = ryu_js::Buffer::new();
            out.extend_from_slice(buf.format_finite(f).as_bytes());
        }
        // Out of a double's range: keep the sender's text rather than invent one.
        _ => out.extend_from_slice(text.as_bytes()),
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // serde_json escapes exactly what JCS requires: '"', '\\', the short
    // forms \b \f \n \r \t, other controls as \u00xx, and nothing else.
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: &str) {
        let v: Value = serde_json::from_str(input).unwrap();
        assert_eq!(
            String::from_utf8(to_vec(&v)).unwrap(),
            expect,
            "input {input}"
        );
    }

    #[test]
    fn orders_members_and_strips_whitespace() {
        check(r#"{ "b" : 1, "a" : [ 1 , 2 ] }"#, r#"{"a":[1,2],"b":1}"#);
        check(
            r#"{"a":{"z":null,"y":true}}"#,
            r#"{"a":{"y":true,"z":null}}"#,
        );
    }

    #[test]
    fn escapes_like_rfc_8785() {
        check(r#""\u0041\u00e9\/\u001f\n""#, "\"Aé/\\u001f\\n\"");
        check(
            r#""\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/""#,
            "\"€$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"",
        );
    }

    #[test]
    fn sorts_by_utf16_code_units() {
        // RFC 8785 section 3.2.3's example, in its required order.
        let input = "{\"\\u20ac\":1,\"\\r\":2,\"\\ufb33\":3,\"1\":4,\"\\ud83d\\ude00\":5,\"\\u0080\":6,\"\\u00f6\":7}";
        let v: Value = serde_json::from_str(input).unwrap();
        let out = String::from_utf8(to_vec(&v)).unwrap();
        let order: Vec<&str> = ["\\r", "1", "\u{80}", "ö", "€", "😀", "דּ"].to_vec();
        let mut last = 0;
        for k in order {
            let at = out
                .find(&format!("\"{k}\""))
                .unwrap_or_else(|| panic!("{k} in {out}"));
            assert!(at >= last, "{k} out of order in {out}");
            last = at;
        }
    }

    #[test]
    fn numbers_follow_ecmascript_except_integers_stay_exact() {
        check(
            "[1.0, 1e2, 0.5, -0, 1E-7, 123456789012345678901234567890]",
            "[1,100,0.5,0,1e-7,123456789012345678901234567890]",
        );
        check("[9007199254740993]", "[9007199254740993]");
        check("[4.50, 2e-3, 1.5e300]", "[4.5,0.002,1.5e+300]");
    }

    #[test]
    fn same_content_same_bytes() {
        let a: Value = serde_json::from_str(r#"{"id":"x","n":[1,2,{"k":"\u00e9"}]}"#).unwrap();
        let b: Value =
            serde_json::from_str("{\n \"n\": [1, 2, {\"k\": \"é\"}],\n \"id\": \"x\"\n}").unwrap();
        assert_eq!(to_vec(&a), to_vec(&b));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| serde_json::json!(n)),
                (-1e12f64..1e12).prop_map(|f| serde_json::json!(f)),
                "\\PC{0,8}".prop_map(Value::String),
            ];
            leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map("\\PC{0,6}", inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            /// The canonical form is a fixed point: parsing it and
            /// canonicalising again gives the same bytes.
            #[test]
            fn canonical_form_is_stable(v in json()) {
                let once = to_vec(&v);
                let reparsed: Value = serde_json::from_slice(&once).unwrap();
                prop_assert_eq!(to_vec(&reparsed), once);
            }

            /// However a sender spaces the same value, the canonical bytes agree.
            #[test]
            fn pretty_and_compact_agree(v in json()) {
                let pretty: Value = serde_json::from_str(&serde_json::to_string_pretty(&v).unwrap()).unwrap();
                prop_assert_eq!(to_vec(&pretty), to_vec(&v));
            }
        }
    }
}
