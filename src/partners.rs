//! Integrator authentication and per-partner rate limits (GUARANTEES.md: "The integrator API").

use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::config::{PartnerConfig, RateLimit};
use crate::domain::ids::PartnerName;
use crate::ratelimit::Limiter;

pub struct Partner {
    pub name: PartnerName,
    keys: Vec<Vec<u8>>,
    /// Kept across a reload that leaves the partner's limit alone.
    pub limiter: Option<Arc<Limiter>>,
    rate_limit: Option<RateLimit>,
}

pub struct Partners(Vec<Arc<Partner>>);

impl Partners {
    /// The partners of `configs`; those of `previous` (replaced by a
    /// reload) keep their limiter's state where their limit is unchanged.
    pub fn new(configs: &[PartnerConfig], previous: Option<&Partners>) -> Partners {
        Partners(
            configs
                .iter()
                .map(|p| {
                    let kept = previous
                        .and_then(|prev| prev.0.iter().find(|old| old.name == p.name.as_str()))
                        .filter(|old| old.rate_limit == p.rate_limit)
                        .and_then(|old| old.limiter.clone());
                    Arc::new(Partner {
                        name: PartnerName::from(p.name.as_str()),
                        keys: p
                            .api_keys
                            .iter()
                            .map(|k| k.expose().as_bytes().to_vec())
                            .collect(),
                        limiter: kept.or_else(|| p.rate_limit.map(|l| Arc::new(Limiter::new(l)))),
                        rate_limit: p.rate_limit,
                    })
                })
                .collect(),
        )
    }

    /// The partner whose API key is `presented`. Every configured key is
    /// compared, in constant time, whatever matched: how long this takes
    /// tells nothing about which key, or how much of one, was right.
    pub fn authenticate(&self, presented: &[u8]) -> Option<Arc<Partner>> {
        let mut found = None;
        for partner in &self.0 {
            for key in &partner.keys {
                if bool::from(key.as_slice().ct_eq(presented)) {
                    found = Some(partner.clone());
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, NoEnv};

    #[test]
    fn any_of_a_partners_keys_authenticates_it() {
        let cfg = Config::parse(
            r#"
            [[partners]]
            name = "acme"
            api_keys = ["old-key", "new-key"]
            [[partners]]
            name = "globex"
            api_keys = ["globex-key"]
            "#,
            &NoEnv,
        )
        .unwrap();
        let p = Partners::new(&cfg.partners, None);
        assert_eq!(p.authenticate(b"old-key").unwrap().name, "acme");
        assert_eq!(p.authenticate(b"new-key").unwrap().name, "acme");
        assert_eq!(p.authenticate(b"globex-key").unwrap().name, "globex");
        assert!(p.authenticate(b"new-ke").is_none());
        assert!(p.authenticate(b"").is_none());
    }
}
