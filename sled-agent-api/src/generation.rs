//! `Generation`: the counter that orders every VMM state update.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A state generation: starts at 1, and every state change moves it up by one.
///
/// Nexus applies a VMM write only if its generation is greater than the stored one,
/// which is what makes a late or duplicated report harmless. The maximum is
/// `i64::MAX` because the real system stores it in a signed database column; the wire
/// form rejects anything larger.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Generation(u64);

impl Generation {
    pub const MAX: Generation = Generation(i64::MAX as u64);

    pub const fn new() -> Generation {
        Generation(1)
    }

    /// The generation after this one. Saturates at `MAX` rather than wrapping: a write at
    /// a saturated generation is stale and so rejected, which fails safe.
    pub const fn next(self) -> Generation {
        if self.0 >= Self::MAX.0 {
            Self::MAX
        } else {
            Generation(self.0 + 1)
        }
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl Default for Generation {
    fn default() -> Self {
        Generation::new()
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Generation({})", self.0)
    }
}

#[cfg(feature = "schemars")]
impl schemars::JsonSchema for Generation {
    fn schema_name() -> String {
        "Generation".to_string()
    }

    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        use schemars::schema::{InstanceType, NumberValidation, SchemaObject};
        SchemaObject {
            instance_type: Some(InstanceType::Integer.into()),
            format: Some("uint64".to_string()),
            number: Some(Box::new(NumberValidation {
                minimum: Some(1.0),
                maximum: Some(i64::MAX as f64),
                ..NumberValidation::default()
            })),
            ..SchemaObject::default()
        }
        .into()
    }
}

/// A generation outside `1..=i64::MAX`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("generation {value} is out of range 1..={max}")]
pub struct GenerationOutOfRange {
    pub value: u64,
    pub max: u64,
}

impl TryFrom<u64> for Generation {
    type Error = GenerationOutOfRange;
    fn try_from(value: u64) -> Result<Self, Self::Error> {
        if value == 0 || value > Self::MAX.0 {
            return Err(GenerationOutOfRange { value, max: Self::MAX.0 });
        }
        Ok(Generation(value))
    }
}

impl From<Generation> for u64 {
    fn from(g: Generation) -> u64 {
        g.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_one_and_steps_by_one() {
        let g = Generation::new();
        assert_eq!(g.as_u64(), 1);
        assert_eq!(g.next().as_u64(), 2);
        assert!(g.next() > g);
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        assert_eq!(Generation::MAX.next(), Generation::MAX);
    }

    #[test]
    fn wire_form_rejects_zero_and_values_above_i64_max() {
        let check = |json: &str, ok: bool| {
            let r = serde_json::from_str::<Generation>(json);
            assert_eq!(r.is_ok(), ok, "{json}: {r:?}");
        };
        check("1", true);
        check("9223372036854775807", true);
        check("0", false);
        check("9223372036854775808", false);
        check("-1", false);
    }
}
