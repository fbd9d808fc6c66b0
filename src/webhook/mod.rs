//! The path of a webhook from its bytes to the store: verify the signature
//! on the raw bytes (`signature`), read its identity and mapped fields
//! (`identity`, over RFC 8785 `canonical` JSON), interpret them under the
//! config (`mapping`), and the use case that ties them to the rate limit
//! and the store (`ingest`). All but `ingest` are pure.

pub mod canonical;
pub mod identity;
pub mod ingest;
pub mod mapping;
pub mod signature;
