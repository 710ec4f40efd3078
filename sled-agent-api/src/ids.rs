//! Typed ids over uuid, so a VMM id can never be passed where an instance id belongs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! typed_uuid {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// What this id names, for messages ("instance", "vmm", ...).
            pub const KIND: &'static str = $kind;

            pub const fn from_untyped(id: Uuid) -> Self {
                Self(id)
            }

            /// Builds an id from a number; deterministic runs mint ids this way.
            pub const fn from_u128(n: u128) -> Self {
                Self(Uuid::from_u128(n))
            }

            pub const fn into_untyped(self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        // Debug shows the kind, so a log line or assertion message says which id it was.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{} ({})", self.0, $kind)
            }
        }

        #[cfg(feature = "schemars")]
        impl schemars::JsonSchema for $name {
            fn schema_name() -> String {
                stringify!($name).to_string()
            }

            fn json_schema(g: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
                <Uuid as schemars::JsonSchema>::json_schema(g)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::from_str(s).map(Self)
            }
        }
    };
}

typed_uuid!(
    /// An instance: the user-visible virtual machine, which outlives its VMMs.
    InstanceUuid,
    "instance"
);
typed_uuid!(
    /// A VMM (a Propolis process). omicron calls this id `propolis_id`.
    PropolisUuid,
    "vmm"
);
typed_uuid!(
    /// A sled, the host a sled agent manages.
    SledUuid,
    "sled"
);
typed_uuid!(
    /// A disk, attached to at most one instance.
    DiskUuid,
    "disk"
);
