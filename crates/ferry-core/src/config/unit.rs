//! The one error of the unit parsers (durations, sizes, rates, ratios), so a
//! config file and a command-line flag say the same thing about a bad value.

/// A value with a unit ("300ms", "512MiB", "50Mbit", "1.5%") that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {quantity} {input:?}: {problem}")]
pub struct UnitError {
    /// What the value was meant to be: "duration", "size", "rate", "ratio".
    pub quantity: &'static str,
    pub input: String,
    pub problem: UnitProblem,
}

/// What was wrong with the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitProblem {
    #[error("it is empty")]
    Empty,
    /// The number is missing or unreadable; says what a good value looks like.
    #[error("expected {0}")]
    Expected(&'static str),
    #[error("missing unit ({units})")]
    MissingUnit { units: &'static str },
    #[error("unknown unit {unit:?} ({units})")]
    UnknownUnit { unit: String, units: &'static str },
    #[error("out of range {0}")]
    OutOfRange(&'static str),
}

impl UnitError {
    pub(crate) fn new(quantity: &'static str, input: &str, problem: UnitProblem) -> Self {
        UnitError {
            quantity,
            input: input.to_string(),
            problem,
        }
    }
}
