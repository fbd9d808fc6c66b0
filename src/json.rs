//! Strict JSON for request bodies (GUARANTEES.md: "Hostile traffic"). Pure.
//!
//! RFC 8259 leaves an object that repeats a name undefined: serde_json
//! keeps the last value, other parsers the first, so two readers of one
//! webhook could see two event ids. A body that repeats a name in any
//! object, at any depth, is refused, and the refusal names where.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON, with serde_json's reason.
    Syntax(String),
    /// An object names a member twice: the JSON pointer of that member.
    DuplicateKey(String),
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::Syntax(why) => write!(f, "not valid JSON: {why}"),
            JsonError::DuplicateKey(at) => write!(f, "the name of {at:?} appears twice"),
        }
    }
}

/// Parses `bytes` into a value, refusing repeated names.
pub fn parse(bytes: &[u8]) -> Result<Value, JsonError> {
    check(bytes)?;
    serde_json::from_slice(bytes).map_err(|e| JsonError::Syntax(e.to_string()))
}

/// Checks `bytes` for repeated names without building a value.
pub fn check(bytes: &[u8]) -> Result<(), JsonError> {
    let walk = Walk {
        path: RefCell::new(Vec::new()),
        found: RefCell::new(None),
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let checked = Node(&walk).deserialize(&mut de).and_then(|()| de.end());
    if let Some(at) = walk.found.into_inner() {
        return Err(JsonError::DuplicateKey(at));
    }
    checked.map_err(|e| JsonError::Syntax(e.to_string()))
}

/// The names from the root to the value being read, and the first
/// repeated member found.
struct Walk {
    path: RefCell<Vec<String>>,
    found: RefCell<Option<String>>,
}

impl Walk {
    fn pointer(&self, last: &str) -> String {
        let path = self.path.borrow();
        let mut out = String::new();
        for seg in path.iter().map(String::as_str).chain(std::iter::once(last)) {
            out.push('/');
            out.push_str(&seg.replace('~', "~0").replace('/', "~1"));
        }
        out
    }
}

/// Objects this small are checked by comparing names; larger ones by a
/// set, so a body of a hundred thousand names costs no more than reading.
const SMALL_OBJECT: usize = 16;

#[derive(Clone, Copy)]
struct Node<'w>(&'w Walk);

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Visitor methods that accept their value and look no further.
macro_rules! scalars {
    ($($visit:ident($t:ty)),*) => {
        $(fn $visit<E>(self, _: $t) -> Result<(), E> {
            Ok(())
        })*
    };
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    // Scalars hold nothing that could repeat a name.
    scalars!(
        visit_bool(bool),
        visit_i64(i64),
        visit_u64(u64),
        visit_i128(i128),
        visit_u128(u128),
        visit_f64(f64),
        visit_str(&str)
    );
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            self.0.path.borrow_mut().push(i.to_string());
            let item = seq.next_element_seed(self);
            self.0.path.borrow_mut().pop();
            if item?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut few: Vec<String> = Vec::new();
        let mut many: HashSet<String> = HashSet::new();
        while let Some(name) = map.next_key::<String>()? {
            let repeated = if many.is_empty() && few.len() < SMALL_OBJECT {
                let seen = few.contains(&name);
                few.push(name.clone());
                seen
            } else {
                many.extend(few.drain(..));
                !many.insert(name.clone())
            };
            if repeated {
                *self.0.found.borrow_mut() = Some(self.0.pointer(&name));
                return Err(de::Error::custom("a name appears twice in one object"));
            }
            self.0.path.borrow_mut().push(name);
            let value = map.next_value_seed(self);
            self.0.path.borrow_mut().pop();
            value?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dup(body: &str) -> Option<String> {
        match check(body.as_bytes()) {
            Err(JsonError::DuplicateKey(at)) => Some(at),
            _ => None,
        }
    }

    #[test]
    fn a_repeated_name_is_found_at_any_depth() {
        assert_eq!(dup(r#"{"id":"a","id":"b"}"#).as_deref(), Some("/id"));
        assert_eq!(
            dup(r#"{"data":{"x":[1,{"t":1,"t":2}]}}"#).as_deref(),
            Some("/data/x/1/t")
        );
        // Names are compared after unescaping.
        assert_eq!(dup(r#"{"id":1,"\u0069d":2}"#).as_deref(), Some("/id"));
        // Pointer escapes for "~" and "/".
        assert_eq!(dup(r#"{"a/b~":1,"a/b~":2}"#).as_deref(), Some("/a~1b~0"));
        // A large object is checked too.
        let mut big: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
        big.push("\"k7\":0".into());
        assert_eq!(
            dup(&format!("{{{}}}", big.join(","))).as_deref(),
            Some("/k7")
        );
    }

    #[test]
    fn distinct_names_and_siblings_pass() {
        for body in [
            r#"{"a":1,"b":{"a":1},"c":[{"a":1},{"a":2}]}"#,
            r#"[1,2,3]"#,
            r#""s""#,
            r#"{"n":12345678901234567890123,"f":1.5e300}"#,
            "{}",
        ] {
            assert_eq!(check(body.as_bytes()), Ok(()), "{body}");
            assert!(parse(body.as_bytes()).is_ok(), "{body}");
        }
    }

    #[test]
    fn syntax_errors_are_not_duplicates() {
        for body in ["{", "", "{\"a\":1} x", "{\"a\":1,\"b\"", "nul"] {
            assert!(
                matches!(check(body.as_bytes()), Err(JsonError::Syntax(_))),
                "{body}"
            );
        }
        let deep = "[".repeat(10_000);
        assert!(matches!(check(deep.as_bytes()), Err(JsonError::Syntax(_))));
    }

    #[test]
    fn parse_keeps_numbers_exact() {
        let v = parse(br#"{"n":12345678901234567890123}"#).unwrap();
        assert_eq!(v["n"].to_string(), "12345678901234567890123");
    }
}
