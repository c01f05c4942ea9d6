//! JSON Schemas of the units, for the configuration reference
//! (`ferry config reference`): each is a string in YAML with its own
//! grammar, which the schema's title and description say.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use super::{ByteSize, Rate, Ratio};
use crate::MacAddr;

/// A unit's schema: its name, its title in the reference, the YAML types
/// it is written as, its grammar and examples.
macro_rules! unit_schema {
    ($ty:ty, $name:literal, $title:literal, $types:tt, $grammar:literal, $examples:tt) => {
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "title": $title,
                    "type": $types,
                    "description": $grammar,
                    "examples": $examples,
                })
            }
        }
    };
}

unit_schema!(
    ByteSize,
    "ByteSize",
    "size",
    ["string", "integer"],
    "Bytes, or a whole number with a unit: B, KiB, MiB, GiB, TiB (powers of 1024) or kB, MB, GB, TB (powers of 1000).",
    ["512MiB", "1GiB"]
);

unit_schema!(
    Rate,
    "Rate",
    "rate",
    "string",
    "Bits per second (bit, kbit, Mbit, Gbit) or bytes per second (B/s, kB/s, MB/s, GB/s, KiB/s, MiB/s, GiB/s); fractions allowed.",
    ["1Gbit", "50Mbit", "10MB/s"]
);

unit_schema!(
    Ratio,
    "Ratio",
    "ratio",
    ["string", "number"],
    "A percentage (\"1.5%\") or a fraction (0.015), from 0 to 1.",
    ["1%", 0.01]
);

unit_schema!(
    MacAddr,
    "MacAddr",
    "MAC address",
    "string",
    "Six hexadecimal octets separated by colons or dashes.",
    ["52:54:00:12:34:56"]
);

/// The schema of a `Duration` field read with
/// [`deserialize_duration`](super::deserialize_duration): name it with
/// `#[schemars(with = "ferry_core::config::DurationText")]`.
pub struct DurationText;

unit_schema!(
    DurationText,
    "Duration",
    "duration",
    "string",
    "A number and a unit (ns, us, ms, s, m, h), or several: \"1m30s\".",
    ["300ms", "2s", "1m30s"]
);
