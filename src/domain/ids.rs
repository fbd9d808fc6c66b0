//! The names of things, as types: a shipment id cannot be passed where a
//! partner's name is expected, nor a tracking number where an order id is.
//! Each is stored as the plain string it wraps, so the records' JSON keeps
//! its shape. Pure.

use serde::{Deserialize, Serialize};

macro_rules! name {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_string())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
    };
}

name!(
    /// A shipment minted here: `shp_` and a UUIDv7.
    ShipmentId
);
name!(
    /// A configured partner (integrator), by its name.
    PartnerName
);
name!(
    /// The integrator's own order id: its reference for a shipment, the
    /// identity of an order created here.
    OrderId
);
name!(
    /// A carrier's tracking number.
    TrackingNumber
);
name!(
    /// A label, as the carrier names it.
    LabelId
);
name!(
    /// A stock reservation, as the inventory service names it.
    ReservationId
);
name!(
    /// A charge, as the payment service names it.
    TransactionId
);

/// An order as the store finds it: partners choose their order ids
/// independently, so an id is unique only within its partner's orders.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrderKey {
    pub partner: PartnerName,
    pub order_id: OrderId,
}

impl OrderKey {
    pub fn new(partner: PartnerName, order_id: OrderId) -> OrderKey {
        OrderKey { partner, order_id }
    }
}

impl std::fmt::Display for OrderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.partner, self.order_id)
    }
}
