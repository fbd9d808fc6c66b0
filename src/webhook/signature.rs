//! Webhook signature schemes: raw body bytes and headers in, `Verified` or a
//! reason out. Pure: the clock is an argument, and nothing here logs.
//!
//! Every comparison of a computed MAC with a presented one goes through
//! `subtle`, so the time taken does not reveal how many bytes matched.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use unicode_normalization::UnicodeNormalization;

type HmacSha256 = Hmac<Sha256>;

/// Accepts base64 with or without padding, as senders differ (GUARANTEES.md: "Signatures").
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// A Standard Webhooks public key's prefix: such a source verifies `v1a`.
pub const PUBLIC_KEY_PREFIX: &str = "whpk_";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemeKind {
    StandardWebhooks,
    Stripe,
    Github,
    Easypost,
    Aftership,
    Shopify,
    /// HTTP Basic credentials, for senders that sign nothing; the secrets
    /// are the accepted `user:password` pairs.
    Basic,
    /// A static token in a configured header (lower-case), for senders
    /// that sign nothing; the secrets are the accepted tokens.
    HeaderToken {
        header: String,
    },
    /// `hmac-sha256` with a configured header (lower-case), encoding and prefix.
    Generic {
        header: String,
        encoding: Encoding,
        prefix: String,
        nfkd: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheme {
    kind: SchemeKind,
    tolerance: Duration,
    /// Standard Webhooks with `whpk_` public keys: `v1a` (Ed25519)
    /// signatures, and only those.
    public_keys: bool,
}

/// What a successful verification learned besides "authentic".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The event id carried by the verified header set, when the scheme has one.
    pub event_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The signed timestamp is further from now than the tolerance, by
    /// this many seconds.
    Stale { by_secs: u64 },
    /// Anything else: missing header, malformed value, no signature matched.
    /// The text says which, never what was expected.
    Invalid(&'static str),
}

impl Scheme {
    pub fn new(kind: SchemeKind, tolerance: Option<Duration>) -> Scheme {
        Scheme {
            kind,
            tolerance: tolerance.unwrap_or(DEFAULT_TOLERANCE),
            public_keys: false,
        }
    }

    /// This scheme with `secrets` as its keys: a Standard Webhooks source
    /// whose secrets are all `whpk_` public keys verifies `v1a` (Ed25519)
    /// signatures. Secrets of both kinds in one source are an error.
    pub fn for_secrets<'a>(
        mut self,
        secrets: impl IntoIterator<Item = &'a str>,
    ) -> Result<Scheme, &'static str> {
        if self.kind == SchemeKind::StandardWebhooks {
            let public: Vec<bool> = secrets
                .into_iter()
                .map(|s| s.starts_with(PUBLIC_KEY_PREFIX))
                .collect();
            if public.iter().any(|p| *p) && !public.iter().all(|p| *p) {
                return Err("whsec_ secrets and whpk_ public keys cannot be mixed in one source");
            }
            self.public_keys = public.first().copied().unwrap_or(false);
        }
        Ok(self)
    }

    pub fn kind(&self) -> &SchemeKind {
        &self.kind
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            SchemeKind::StandardWebhooks => "standard-webhooks",
            SchemeKind::Stripe => "stripe",
            SchemeKind::Github => "github",
            SchemeKind::Easypost => "easypost",
            SchemeKind::Aftership => "aftership",
            SchemeKind::Shopify => "shopify",
            SchemeKind::Basic => "basic",
            SchemeKind::HeaderToken { .. } => "header-token",
            SchemeKind::Generic { .. } => "hmac-sha256",
        }
    }

    /// Whether a delivery carries a signature of its body; `basic` and
    /// `header-token` carry credentials instead.
    pub fn signs(&self) -> bool {
        !self.public_keys
            && !matches!(
                self.kind,
                SchemeKind::Basic | SchemeKind::HeaderToken { .. }
            )
    }

    pub fn is_timestamped(&self) -> bool {
        matches!(self.kind, SchemeKind::StandardWebhooks | SchemeKind::Stripe)
    }

    /// How far a signed timestamp may be from now; None for schemes that
    /// sign no timestamp.
    pub fn tolerance(&self) -> Option<Duration> {
        self.is_timestamped().then_some(self.tolerance)
    }

    /// Header names (lower-case) whose values are signatures and must be
    /// redacted wherever headers are shown.
    pub fn signature_headers(&self) -> Vec<&str> {
        match &self.kind {
            SchemeKind::StandardWebhooks => vec!["webhook-signature", "svix-signature"],
            SchemeKind::Stripe => vec!["stripe-signature"],
            SchemeKind::Github => vec!["x-hub-signature-256", "x-hub-signature"],
            SchemeKind::Easypost => vec!["x-hmac-signature"],
            SchemeKind::Aftership => vec!["aftership-hmac-sha256"],
            SchemeKind::Shopify => vec!["x-shopify-hmac-sha256"],
            SchemeKind::Basic => vec!["authorization"],
            SchemeKind::HeaderToken { header } | SchemeKind::Generic { header, .. } => {
                vec![header.as_str()]
            }
        }
    }

    /// Turns a configured secret into the HMAC key this scheme uses.
    pub fn key_from_secret(&self, secret: &str) -> Result<Vec<u8>, &'static str> {
        match &self.kind {
            SchemeKind::StandardWebhooks if self.public_keys => {
                let key = secret
                    .strip_prefix(PUBLIC_KEY_PREFIX)
                    .and_then(|b64| BASE64_LENIENT.decode(b64).ok())
                    .and_then(|key| <[u8; 32]>::try_from(key).ok())
                    .filter(|key| ed25519_dalek::VerifyingKey::from_bytes(key).is_ok())
                    .ok_or("a standard-webhooks public key must be whpk_ followed by the base64 of an Ed25519 public key")?;
                Ok(key.to_vec())
            }
            SchemeKind::StandardWebhooks => {
                let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
                match BASE64_LENIENT.decode(b64) {
                    Ok(key) if !key.is_empty() => Ok(key),
                    _ => Err("a standard-webhooks secret must be whsec_ followed by base64"),
                }
            }
            SchemeKind::Easypost | SchemeKind::Generic { nfkd: true, .. } => {
                Ok(secret.nfkd().collect::<String>().into_bytes())
            }
            SchemeKind::Basic if !secret.contains(':') => {
                Err("a basic secret must be user:password")
            }
            SchemeKind::Basic | SchemeKind::HeaderToken { .. } if secret.trim().is_empty() => {
                Err("must not be blank")
            }
            _ => Ok(secret.as_bytes().to_vec()),
        }
    }

    /// Verifies a delivery. `keys` come from `key_from_secret`; any may match.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        keys: &[Vec<u8>],
        now_unix: i64,
    ) -> Result<Verified, Rejection> {
        let timestamped = Timestamped {
            headers,
            body,
            keys,
            now_unix,
        };
        match &self.kind {
            SchemeKind::StandardWebhooks => self.verify_standard(&timestamped),
            SchemeKind::Stripe => self.verify_stripe(&timestamped),
            SchemeKind::Github => {
                let value = header(headers, "x-hub-signature-256")?;
                let sig = value.strip_prefix("sha256=").ok_or(Rejection::Invalid(
                    "X-Hub-Signature-256 lacks the sha256= prefix",
                ))?;
                let sig = decode(Encoding::Hex, sig)?;
                check(keys, &[body], &[sig])?;
                Ok(Verified {
                    event_id: optional_header(headers, "x-github-delivery"),
                })
            }
            SchemeKind::Easypost => {
                let value = header(headers, "x-hmac-signature")?;
                let sig = value
                    .strip_prefix("hmac-sha256-hex=")
                    .ok_or(Rejection::Invalid(
                        "X-Hmac-Signature lacks the hmac-sha256-hex= prefix",
                    ))?;
                check(keys, &[body], &[decode(Encoding::Hex, sig)?])?;
                Ok(Verified { event_id: None })
            }
            SchemeKind::Aftership => {
                let value = header(headers, "aftership-hmac-sha256")?;
                check(keys, &[body], &[decode(Encoding::Base64, &value)?])?;
                Ok(Verified { event_id: None })
            }
            SchemeKind::Shopify => {
                let value = header(headers, "x-shopify-hmac-sha256")?;
                check(keys, &[body], &[decode(Encoding::Base64, &value)?])?;
                Ok(Verified {
                    event_id: optional_header(headers, "x-shopify-webhook-id"),
                })
            }
            SchemeKind::Basic => {
                same_as_one(keys, &basic_credentials(headers)?)?;
                Ok(Verified { event_id: None })
            }
            SchemeKind::HeaderToken { header: name } => {
                same_as_one(keys, header(headers, name)?.as_bytes())?;
                Ok(Verified { event_id: None })
            }
            SchemeKind::Generic {
                header: name,
                encoding,
                prefix,
                ..
            } => {
                let value = header(headers, name)?;
                let sig = value
                    .strip_prefix(prefix.as_str())
                    .ok_or(Rejection::Invalid(
                        "signature header lacks the configured prefix",
                    ))?;
                check(keys, &[body], &[decode(*encoding, sig)?])?;
                Ok(Verified { event_id: None })
            }
        }
    }

    fn fresh(&self, ts: &str, now_unix: i64) -> Result<(), Rejection> {
        let ts: i64 = ts.trim().parse().map_err(|_| {
            Rejection::Invalid("signature timestamp is not a whole number of unix seconds")
        })?;
        let skew = now_unix.abs_diff(ts);
        if skew > self.tolerance.as_secs() {
            return Err(Rejection::Stale {
                by_secs: skew - self.tolerance.as_secs(),
            });
        }
        Ok(())
    }

    fn verify_standard(&self, d: &Timestamped) -> Result<Verified, Rejection> {
        // The webhook-* set wins when complete; the svix-* set is the older
        // name for the same thing (GUARANTEES.md: "Signatures").
        let set = ["webhook", "svix"].into_iter().find_map(|p| {
            let id = optional_header(d.headers, &format!("{p}-id"))?;
            let ts = optional_header(d.headers, &format!("{p}-timestamp"))?;
            let sig = optional_header(d.headers, &format!("{p}-signature"))?;
            Some((id, ts, sig))
        });
        let (id, ts, sigs) = set.ok_or(Rejection::Invalid(
            "missing webhook-id, webhook-timestamp or webhook-signature header",
        ))?;
        self.fresh(&ts, d.now_unix)?;
        let version = if self.public_keys { "v1a," } else { "v1," };
        let candidates: Vec<Vec<u8>> = sigs
            .split(' ')
            .filter_map(|entry| entry.strip_prefix(version))
            .filter_map(|b64| BASE64_LENIENT.decode(b64).ok())
            .collect();
        if candidates.is_empty() {
            return Err(Rejection::Invalid(if self.public_keys {
                "webhook-signature holds no v1a signature"
            } else {
                "webhook-signature holds no v1 signature"
            }));
        }
        let signed = [id.as_bytes(), b".", ts.as_bytes(), b".", d.body];
        if self.public_keys {
            verify_ed25519(d.keys, &signed.concat(), &candidates)?;
        } else {
            check(d.keys, &signed, &candidates)?;
        }
        Ok(Verified { event_id: Some(id) })
    }

    fn verify_stripe(&self, d: &Timestamped) -> Result<Verified, Rejection> {
        let value = header(d.headers, "stripe-signature")?;
        let mut ts = None;
        let mut candidates = Vec::new();
        for item in value.split(',') {
            match item.trim().split_once('=') {
                Some(("t", t)) => ts = Some(t),
                Some(("v1", sig)) => {
                    if let Ok(sig) = hex::decode(sig) {
                        candidates.push(sig);
                    }
                }
                _ => {}
            }
        }
        let ts = ts.ok_or(Rejection::Invalid("Stripe-Signature has no t= timestamp"))?;
        self.fresh(ts, d.now_unix)?;
        if candidates.is_empty() {
            return Err(Rejection::Invalid("Stripe-Signature holds no v1 signature"));
        }
        check(d.keys, &[ts.as_bytes(), b".", d.body], &candidates)?;
        Ok(Verified { event_id: None })
    }

    /// The headers a sender of this scheme would attach to `body`, signed with
    /// `key` at `now_unix`. `id` is used where the scheme carries an event id.
    pub fn sign(&self, key: &[u8], body: &[u8], now_unix: i64, id: &str) -> Vec<(String, String)> {
        let ts = now_unix.to_string();
        let h = |name: &str, value: String| (name.to_string(), value);
        match &self.kind {
            SchemeKind::StandardWebhooks => {
                let mac = mac(key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
                vec![
                    h("webhook-id", id.to_string()),
                    h("webhook-timestamp", ts),
                    h("webhook-signature", format!("v1,{}", STANDARD.encode(mac))),
                ]
            }
            SchemeKind::Stripe => {
                let mac = mac(key, &[ts.as_bytes(), b".", body]);
                vec![h(
                    "Stripe-Signature",
                    format!("t={ts},v1={}", hex::encode(mac)),
                )]
            }
            SchemeKind::Github => vec![
                h(
                    "X-Hub-Signature-256",
                    format!("sha256={}", hex::encode(mac(key, &[body]))),
                ),
                h("X-GitHub-Delivery", id.to_string()),
            ],
            SchemeKind::Easypost => vec![h(
                "X-Hmac-Signature",
                format!("hmac-sha256-hex={}", hex::encode(mac(key, &[body]))),
            )],
            SchemeKind::Aftership => vec![h(
                "aftership-hmac-sha256",
                STANDARD.encode(mac(key, &[body])),
            )],
            SchemeKind::Shopify => vec![
                h("X-Shopify-Hmac-Sha256", STANDARD.encode(mac(key, &[body]))),
                h("X-Shopify-Webhook-Id", id.to_string()),
            ],
            SchemeKind::Basic => vec![h(
                "Authorization",
                format!("Basic {}", STANDARD.encode(key)),
            )],
            SchemeKind::HeaderToken { header } => {
                vec![h(header, String::from_utf8_lossy(key).into_owned())]
            }
            SchemeKind::Generic {
                header,
                encoding,
                prefix,
                ..
            } => {
                let m = mac(key, &[body]);
                let enc = match encoding {
                    Encoding::Hex => hex::encode(m),
                    Encoding::Base64 => STANDARD.encode(m),
                };
                vec![h(header, format!("{prefix}{enc}"))]
            }
        }
    }
}

fn header(headers: &HeaderMap, name: &str) -> Result<String, Rejection> {
    match headers.get(name) {
        None => Err(Rejection::Invalid("missing signature header")),
        Some(v) => v
            .to_str()
            .map(|s| s.trim().to_string())
            .map_err(|_| Rejection::Invalid("signature header is not ASCII")),
    }
}

fn optional_header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)?
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn decode(encoding: Encoding, sig: &str) -> Result<Vec<u8>, Rejection> {
    match encoding {
        Encoding::Hex => hex::decode(sig).map_err(|_| Rejection::Invalid("signature is not hex")),
        Encoding::Base64 => BASE64_LENIENT
            .decode(sig)
            .map_err(|_| Rejection::Invalid("signature is not base64")),
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

/// Passes when any key's MAC over `parts` equals any candidate.
fn check(keys: &[Vec<u8>], parts: &[&[u8]], candidates: &[Vec<u8>]) -> Result<(), Rejection> {
    let mut ok = subtle::Choice::from(0);
    for key in keys {
        let expected = mac(key, parts);
        for c in candidates {
            // Lengths are public (a SHA-256 MAC is 32 bytes); only contents are compared in constant time.
            if c.len() == expected.len() {
                ok |= expected.ct_eq(c);
            }
        }
    }
    if bool::from(ok) {
        Ok(())
    } else {
        Err(Rejection::Invalid("no signature matched"))
    }
}

/// Whether any of `signatures` is an Ed25519 signature of `message` by one
/// of the public `keys`. Nothing here is secret, so no constant-time
/// comparison is needed.
fn verify_ed25519(
    keys: &[Vec<u8>],
    message: &[u8],
    signatures: &[Vec<u8>],
) -> Result<(), Rejection> {
    use ed25519_dalek::{Signature, VerifyingKey};
    let keys: Vec<VerifyingKey> = keys
        .iter()
        .filter_map(|k| <[u8; 32]>::try_from(k.as_slice()).ok())
        .filter_map(|k| VerifyingKey::from_bytes(&k).ok())
        .collect();
    let matched = signatures
        .iter()
        .filter_map(|s| Signature::from_slice(s).ok())
        .any(|sig| keys.iter().any(|k| k.verify_strict(message, &sig).is_ok()));
    if matched {
        Ok(())
    } else {
        Err(Rejection::Invalid("no signature matched"))
    }
}

/// The `user:password` an `Authorization: Basic` header carries (the
/// scheme's name in any case, RFC 7617).
fn basic_credentials(headers: &HeaderMap) -> Result<Vec<u8>, Rejection> {
    let value = header(headers, "authorization")?;
    match value.split_once(' ') {
        Some((scheme, encoded)) if scheme.eq_ignore_ascii_case("basic") => BASE64_LENIENT
            .decode(encoded.trim())
            .map_err(|_| Rejection::Invalid("Basic credentials are not base64")),
        _ => Err(Rejection::Invalid("Authorization is not Basic credentials")),
    }
}

/// Whether `presented` is one of `keys` (credentials, tokens). Each is
/// compared by its SHA-256 digest, in constant time: neither how many
/// bytes matched nor a key's length shows in the time taken, and every key
/// is compared.
fn same_as_one(keys: &[Vec<u8>], presented: &[u8]) -> Result<(), Rejection> {
    use sha2::Digest;
    let presented = Sha256::digest(presented);
    let mut ok = subtle::Choice::from(0);
    for key in keys {
        ok |= Sha256::digest(key).ct_eq(&presented);
    }
    if bool::from(ok) {
        Ok(())
    } else {
        Err(Rejection::Invalid("the credentials are not accepted"))
    }
}

/// A delivery of a scheme with a signed timestamp, as it is checked.
#[derive(Clone, Copy)]
struct Timestamped<'a> {
    headers: &'a HeaderMap,
    body: &'a [u8],
    keys: &'a [Vec<u8>],
    now_unix: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `verified` is a refusal as invalid.
    fn invalid<T>(verified: Result<T, Rejection>) -> bool {
        matches!(verified, Err(Rejection::Invalid(_)))
    }
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn scheme(kind: SchemeKind) -> Scheme {
        Scheme::new(kind, None)
    }

    fn keys(s: &Scheme, secrets: &[&str]) -> Vec<Vec<u8>> {
        secrets
            .iter()
            .map(|x| s.key_from_secret(x).unwrap())
            .collect()
    }

    #[test]
    fn basic_credentials_are_any_of_the_accepted_pairs() {
        let s = scheme(SchemeKind::Basic);
        let k = keys(&s, &["carrier:old-pass", "carrier:n\u{e9}w:pass"]);
        let auth = |v: &str| headers(&[("authorization", v)]);
        let basic = |pair: &str| format!("Basic {}", STANDARD.encode(pair));
        assert!(
            s.verify(&auth(&basic("carrier:old-pass")), b"{}", &k, 0)
                .is_ok()
        );
        // A password may hold a colon and any UTF-8; the scheme's name is
        // case-insensitive.
        let new = format!("bAsIc {}", STANDARD.encode("carrier:n\u{e9}w:pass"));
        assert!(s.verify(&auth(&new), b"{}", &k, 0).is_ok());
        for wrong in [
            basic("carrier:old-pas"),
            basic("carrier:old-passs"),
            basic("Carrier:old-pass"),
            basic(""),
            "Bearer carrier:old-pass".into(),
            "Basic !!!".into(),
            "Basic".into(),
        ] {
            assert!(invalid(s.verify(&auth(&wrong), b"{}", &k, 0)), "{wrong}");
        }
        assert!(invalid(s.verify(&HeaderMap::new(), b"{}", &k, 0)));
        assert_eq!(
            s.key_from_secret("no-colon"),
            Err("a basic secret must be user:password")
        );
        assert_eq!(s.signature_headers(), ["authorization"]);
        assert!(!s.signs());
    }

    #[test]
    fn a_header_token_is_any_of_the_accepted_tokens() {
        let s = scheme(SchemeKind::HeaderToken {
            header: "x-api-key".into(),
        });
        let k = keys(&s, &["tok-1", "a-much-longer-second-token"]);
        let with = |v: &str| headers(&[("X-Api-Key", v)]);
        assert!(s.verify(&with("tok-1"), b"{}", &k, 0).is_ok());
        assert!(
            s.verify(&with("a-much-longer-second-token"), b"{}", &k, 0)
                .is_ok()
        );
        for wrong in ["tok-2", "tok-", "tok-11", "TOK-1", ""] {
            assert!(invalid(s.verify(&with(wrong), b"{}", &k, 0)), "{wrong:?}");
        }
        assert!(invalid(s.verify(
            &headers(&[("x-other", "tok-1")]),
            b"{}",
            &k,
            0
        )));
        assert_eq!(s.key_from_secret(" "), Err("must not be blank"));
        assert_eq!(s.signature_headers(), ["x-api-key"]);
    }

    /// Comparing by digest: a key that is a prefix of the presented value,
    /// or the reverse, never matches, whatever the lengths.
    #[test]
    fn credentials_compare_whole_by_digest() {
        let k = vec![b"secret".to_vec(), b"s".to_vec()];
        assert!(same_as_one(&k, b"secret").is_ok());
        assert!(same_as_one(&k, b"s").is_ok());
        for other in [&b"secre"[..], b"secrets", b"", b"se"] {
            assert!(same_as_one(&k, other).is_err());
        }
        assert!(same_as_one(&[], b"").is_err());
    }

    /// `v1a` (11.8): a Standard Webhooks source whose keys are `whpk_`
    /// public keys takes Ed25519 signatures of `{id}.{timestamp}.{body}`,
    /// any key, any of the listed signatures, and nothing else.
    #[test]
    fn v1a_signatures_verify_against_whpk_public_keys_and_only_those() {
        use ed25519_dalek::{Signer, SigningKey};
        let signer = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let whpk =
            |k: &SigningKey| format!("whpk_{}", STANDARD.encode(k.verifying_key().as_bytes()));
        let s = scheme(SchemeKind::StandardWebhooks)
            .for_secrets([whpk(&other).as_str(), whpk(&signer).as_str()])
            .unwrap();
        assert!(!s.signs());
        let k = keys(&s, &[&whpk(&other), &whpk(&signer)]);
        let v1a = |key: &SigningKey, body: &[u8]| {
            let ts = SW_TS.to_string();
            let message = [SW_ID.as_bytes(), b".", ts.as_bytes(), b".", body].concat();
            format!("v1a,{}", STANDARD.encode(key.sign(&message).to_bytes()))
        };
        // `signature` on `body`, checked by `scheme` with `keys` at `now`.
        let at = |scheme: &Scheme, keys: &[Vec<u8>], signature: &str, body: &[u8], now: i64| {
            scheme.verify(&sw_headers("webhook", signature, SW_TS), body, keys, now)
        };
        let good = v1a(&signer, SW_BODY);
        let ok = at(&s, &k, &good, SW_BODY, SW_TS).unwrap();
        assert_eq!(ok.event_id.as_deref(), Some(SW_ID));
        // Several listed, one good: it passes.
        assert!(at(&s, &k, &format!("v1a,AAAA {good}"), SW_BODY, SW_TS).is_ok());
        // Another body, a key not configured, a v1 HMAC: refused.
        let stranger = v1a(&SigningKey::from_bytes(&[9; 32]), SW_BODY);
        for (signature, body) in [
            (good.as_str(), &br#"{"test": 2432232315}"#[..]),
            (stranger.as_str(), SW_BODY),
            (SW_SIG, SW_BODY),
        ] {
            assert!(invalid(at(&s, &k, signature, body, SW_TS)), "{signature}");
        }
        // The timestamp rule is the same.
        let late = at(&s, &k, &good, SW_BODY, SW_TS + 301);
        assert!(matches!(late, Err(Rejection::Stale { .. })));
        // A whsec_ source takes no v1a signature.
        let hmac = scheme(SchemeKind::StandardWebhooks);
        let hk = keys(&hmac, &[SW_SECRET]);
        assert!(invalid(at(&hmac, &hk, &good, SW_BODY, SW_TS)));
        // Keys of both kinds in one source, or a public key that is not one.
        let mixed = scheme(SchemeKind::StandardWebhooks).for_secrets([SW_SECRET, &whpk(&signer)]);
        assert!(mixed.is_err());
        assert!(s.key_from_secret("whpk_AAAA").is_err());
    }

    // The Standard Webhooks reference libraries' test vector.
    const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SW_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SW_TS: i64 = 1614265330;
    const SW_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SW_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn sw_headers(prefix: &str, sig: &str, ts: i64) -> HeaderMap {
        headers(&[
            (&format!("{prefix}-id"), SW_ID),
            (&format!("{prefix}-timestamp"), &ts.to_string()),
            (&format!("{prefix}-signature"), sig),
        ])
    }

    #[test]
    fn standard_webhooks_reference_vector() {
        let s = scheme(SchemeKind::StandardWebhooks);
        let k = keys(&s, &[SW_SECRET]);
        let v = s
            .verify(&sw_headers("webhook", SW_SIG, SW_TS), SW_BODY, &k, SW_TS)
            .unwrap();
        assert_eq!(v.event_id.as_deref(), Some(SW_ID));
        // The secret without its prefix and without padding is the same key.
        let bare = keys(&s, &["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]);
        assert_eq!(bare, k);
        // Our signer produces the same header.
        let signed = s.sign(&k[0], SW_BODY, SW_TS, SW_ID);
        assert_eq!(signed[2].1, SW_SIG);
    }

    #[test]
    fn standard_webhooks_svix_headers_and_fallback() {
        let s = scheme(SchemeKind::StandardWebhooks);
        let k = keys(&s, &[SW_SECRET]);
        assert!(
            s.verify(&sw_headers("svix", SW_SIG, SW_TS), SW_BODY, &k, SW_TS)
                .is_ok()
        );
        // An incomplete webhook-* set falls back to a complete svix-* set.
        let mut h = sw_headers("svix", SW_SIG, SW_TS);
        h.insert("webhook-id", HeaderValue::from_static("other"));
        assert_eq!(
            s.verify(&h, SW_BODY, &k, SW_TS)
                .unwrap()
                .event_id
                .as_deref(),
            Some(SW_ID)
        );
        // Neither set complete.
        let h = headers(&[("webhook-id", SW_ID), ("svix-timestamp", "1")]);
        assert!(invalid(s.verify(&h, SW_BODY, &k, SW_TS)));
    }

    #[test]
    fn standard_webhooks_several_entries_unknown_versions_and_junk() {
        let s = scheme(SchemeKind::StandardWebhooks);
        let k = keys(&s, &[SW_SECRET]);
        let wrong = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        for sig in [
            format!("{wrong} {SW_SIG}"),
            format!("v2,abc {SW_SIG}"),
            format!("garbage v1,!!! {SW_SIG}"),
            SW_SIG.trim_end_matches('=').to_string(),
        ] {
            assert!(
                s.verify(&sw_headers("webhook", &sig, SW_TS), SW_BODY, &k, SW_TS)
                    .is_ok(),
                "{sig}"
            );
        }
        for sig in [
            wrong.to_string(),
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".into(),
            "".into(),
        ] {
            assert!(invalid(s.verify(
                &sw_headers("webhook", &sig, SW_TS),
                SW_BODY,
                &k,
                SW_TS
            )));
        }
        // One changed body byte fails.
        assert!(
            s.verify(
                &sw_headers("webhook", SW_SIG, SW_TS),
                br#"{"test": 2432232315}"#,
                &k,
                SW_TS
            )
            .is_err()
        );
    }

    #[test]
    fn tolerance_is_inclusive_and_applies_both_ways() {
        let s = scheme(SchemeKind::StandardWebhooks);
        let k = keys(&s, &[SW_SECRET]);
        let h = sw_headers("webhook", SW_SIG, SW_TS);
        assert!(s.verify(&h, SW_BODY, &k, SW_TS + 300).is_ok());
        assert!(s.verify(&h, SW_BODY, &k, SW_TS - 300).is_ok());
        assert_eq!(
            s.verify(&h, SW_BODY, &k, SW_TS + 301),
            Err(Rejection::Stale { by_secs: 1 })
        );
        assert_eq!(
            s.verify(&h, SW_BODY, &k, SW_TS - 301),
            Err(Rejection::Stale { by_secs: 1 })
        );
        // Stale is reported before a bad signature.
        let bad = sw_headers("webhook", "v1,AAAA", SW_TS);
        assert_eq!(
            s.verify(&bad, SW_BODY, &k, SW_TS + 1000),
            Err(Rejection::Stale { by_secs: 700 })
        );
        // A custom tolerance.
        let s = Scheme::new(SchemeKind::StandardWebhooks, Some(Duration::from_secs(10)));
        assert!(s.verify(&h, SW_BODY, &k, SW_TS + 10).is_ok());
        assert_eq!(
            s.verify(&h, SW_BODY, &k, SW_TS + 11),
            Err(Rejection::Stale { by_secs: 1 })
        );
    }

    #[test]
    fn malformed_timestamp_is_invalid_not_stale() {
        let s = scheme(SchemeKind::StandardWebhooks);
        let k = keys(&s, &[SW_SECRET]);
        let h = headers(&[
            ("webhook-id", SW_ID),
            ("webhook-timestamp", "soon"),
            ("webhook-signature", SW_SIG),
        ]);
        assert!(invalid(s.verify(&h, SW_BODY, &k, SW_TS)));
    }

    // GitHub's documented example ("Validating webhook deliveries").
    #[test]
    fn github_documented_example() {
        let s = scheme(SchemeKind::Github);
        let k = keys(&s, &["It's a Secret to Everybody"]);
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let h = headers(&[("X-Hub-Signature-256", sig), ("X-GitHub-Delivery", "d-1")]);
        let v = s.verify(&h, b"Hello, World!", &k, 0).unwrap();
        assert_eq!(v.event_id.as_deref(), Some("d-1"));
        // Upper-case hex is accepted.
        let h = headers(&[(
            "X-Hub-Signature-256",
            &sig.to_uppercase().replace("SHA256=", "sha256="),
        )]);
        assert_eq!(
            s.verify(&h, b"Hello, World!", &k, 0).unwrap().event_id,
            None
        );
        // Without the prefix it is malformed.
        let h = headers(&[("X-Hub-Signature-256", &sig[7..])]);
        assert!(invalid(s.verify(&h, b"Hello, World!", &k, 0)));
    }

    #[test]
    fn rotation_any_secret_verifies() {
        let s = scheme(SchemeKind::Github);
        let k = keys(&s, &["old", "It's a Secret to Everybody"]);
        let h = headers(&[(
            "X-Hub-Signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        )]);
        assert!(s.verify(&h, b"Hello, World!", &k, 0).is_ok());
        let only_old = keys(&s, &["old"]);
        assert!(s.verify(&h, b"Hello, World!", &only_old, 0).is_err());
    }

    // Computed independently with Python's hmac and hashlib; the payload
    // keeps the trailing newline a pretty-printing sender leaves on, which
    // must be signed as sent.
    const STRIPE_BODY: &[u8] = b"{\n  \"id\": \"evt_test_webhook\",\n  \"object\": \"event\"\n}\n";
    const STRIPE_SECRET: &str = "whsec_test_secret";
    const STRIPE_TS: i64 = 1_700_000_000;
    const STRIPE_SIG: &str = "d3c4aa0a1a511b40677c569aa6fe7b4be56341c01e8cb0a8a41f84d64daf520b";

    #[test]
    fn stripe_vector_with_trailing_newline() {
        let s = scheme(SchemeKind::Stripe);
        let k = keys(&s, &[STRIPE_SECRET]);
        let signed = s.sign(&k[0], STRIPE_BODY, STRIPE_TS, "");
        assert_eq!(signed[0].1, format!("t={STRIPE_TS},v1={STRIPE_SIG}"));
        let ok = headers(&[(
            "Stripe-Signature",
            &format!("t={STRIPE_TS},v0=zz,v1=00ff,v1={STRIPE_SIG}"),
        )]);
        assert!(s.verify(&ok, STRIPE_BODY, &k, STRIPE_TS).is_ok());
        // Without the newline the signature does not match.
        assert!(
            s.verify(&ok, &STRIPE_BODY[..STRIPE_BODY.len() - 1], &k, STRIPE_TS)
                .is_err()
        );
        for bad in [
            format!("v1={STRIPE_SIG}"),
            format!("t={STRIPE_TS}"),
            format!("t={STRIPE_TS},v0={STRIPE_SIG}"),
            "nonsense".to_string(),
        ] {
            let h = headers(&[("Stripe-Signature", &bad)]);
            assert!(
                matches!(
                    s.verify(&h, STRIPE_BODY, &k, STRIPE_TS),
                    Err(Rejection::Invalid(_))
                ),
                "{bad}"
            );
        }
        let h = headers(&[(
            "Stripe-Signature",
            &format!("t={},v1={STRIPE_SIG}", STRIPE_TS - 301),
        )]);
        assert_eq!(
            s.verify(&h, STRIPE_BODY, &k, STRIPE_TS),
            Err(Rejection::Stale { by_secs: 1 })
        );
    }

    // The secret "sécret" written with a precomposed é must be NFKD-normalised
    // (e + combining acute) before use as the key; the expected digest was
    // computed with Python's unicodedata.normalize('NFKD', ...) and hmac.
    #[test]
    fn easypost_normalises_the_secret() {
        let s = scheme(SchemeKind::Easypost);
        let body = br#"{"description":"tracker.updated","id":"evt_1"}"#;
        let precomposed = keys(&s, &["s\u{e9}cret"]);
        let decomposed = keys(&s, &["se\u{301}cret"]);
        assert_eq!(precomposed, decomposed);
        let sig =
            "hmac-sha256-hex=a3ee1114b9d16304f45281390ea5e06c5573503fc9b8950328c720ab6c75cf54";
        assert_eq!(s.sign(&precomposed[0], body, 0, "")[0].1, sig);
        let h = headers(&[("X-Hmac-Signature", sig)]);
        assert!(s.verify(&h, body, &precomposed, 0).is_ok());
        // The raw UTF-8 of the precomposed secret is a different key.
        assert_ne!(precomposed[0], "s\u{e9}cret".as_bytes());
    }

    #[test]
    fn aftership_and_shopify_are_base64() {
        for kind in [SchemeKind::Aftership, SchemeKind::Shopify] {
            let s = scheme(kind.clone());
            let k = keys(&s, &["shh"]);
            let body = b"{\"a\":1}";
            let signed = s.sign(&k[0], body, 0, "sh-1");
            let h = headers(
                &signed
                    .iter()
                    .map(|(a, b)| (a.as_str(), b.as_str()))
                    .collect::<Vec<_>>(),
            );
            let v = s.verify(&h, body, &k, 0).unwrap();
            if kind == SchemeKind::Shopify {
                assert_eq!(v.event_id.as_deref(), Some("sh-1"));
            }
            let unpadded = signed[0].1.trim_end_matches('=').to_string();
            let h = headers(&[(signed[0].0.as_str(), unpadded.as_str())]);
            assert!(s.verify(&h, body, &k, 0).is_ok());
            let h = headers(&[(signed[0].0.as_str(), "not base64!")]);
            assert!(invalid(s.verify(&h, body, &k, 0)));
        }
    }

    #[test]
    fn generic_prefix_is_required_and_encodings_work() {
        for encoding in [Encoding::Hex, Encoding::Base64] {
            let s = scheme(SchemeKind::Generic {
                header: "x-sig".into(),
                encoding,
                prefix: "sha256=".into(),
                nfkd: false,
            });
            let k = keys(&s, &["k"]);
            let signed = s.sign(&k[0], b"body", 0, "");
            let h = headers(&[("x-sig", &signed[0].1)]);
            assert!(s.verify(&h, b"body", &k, 0).is_ok());
            let bare = signed[0].1.trim_start_matches("sha256=").to_string();
            let h = headers(&[("x-sig", &bare)]);
            assert!(invalid(s.verify(&h, b"body", &k, 0)));
            assert!(invalid(s.verify(&HeaderMap::new(), b"body", &k, 0)));
        }
    }

    #[test]
    fn bad_standard_webhooks_secret_is_rejected() {
        let s = scheme(SchemeKind::StandardWebhooks);
        assert!(s.key_from_secret("whsec_!!!").is_err());
        assert!(s.key_from_secret("whsec_").is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn kinds() -> Vec<SchemeKind> {
            vec![
                SchemeKind::StandardWebhooks,
                SchemeKind::Stripe,
                SchemeKind::Github,
                SchemeKind::Easypost,
                SchemeKind::Aftership,
                SchemeKind::Shopify,
                SchemeKind::Generic {
                    header: "x-sig".into(),
                    encoding: Encoding::Base64,
                    prefix: "v=".into(),
                    nfkd: true,
                },
            ]
        }

        proptest! {
            /// Arbitrary header values never panic and never verify.
            #[test]
            fn junk_headers_are_rejected_not_panicked_on(
                values in prop::collection::vec("[ -~]{0,80}", 8),
                body in prop::collection::vec(any::<u8>(), 0..64),
            ) {
                for kind in kinds() {
                    let s = scheme(kind);
                    let k = keys(&s, &[SW_SECRET]);
                    let names = ["webhook-id", "webhook-timestamp", "webhook-signature", "stripe-signature",
                                 "x-hub-signature-256", "x-hmac-signature", "x-shopify-hmac-sha256", "x-sig"];
                    let mut h = HeaderMap::new();
                    for (n, v) in names.iter().zip(&values) {
                        if let Ok(v) = HeaderValue::from_str(v) {
                            h.insert(*n, v);
                        }
                    }
                    prop_assert!(s.verify(&h, &body, &k, 1_700_000_000).is_err());
                }
            }

            /// What `sign` produces, `verify` accepts, for any body and any scheme.
            #[test]
            fn sign_then_verify_round_trips(body in prop::collection::vec(any::<u8>(), 0..256), ts in 0i64..4_000_000_000) {
                for kind in kinds() {
                    let s = scheme(kind);
                    let k = keys(&s, &[SW_SECRET]);
                    let mut h = HeaderMap::new();
                    for (n, v) in s.sign(&k[0], &body, ts, "msg_1") {
                        h.insert(http::HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(&v).unwrap());
                    }
                    prop_assert!(s.verify(&h, &body, &k, ts).is_ok());
                }
            }
        }
    }
}
