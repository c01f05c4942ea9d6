//! JSON Schemas of the units, for the configuration reference
//! (`ferry config reference`): each is a string in YAML with its own
//! grammar, which the schema's title and description say.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use super::{ByteSize, Rate, Ratio};
use crate::MacAddr;

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "title": "size",
            "type": ["string", "integer"],
            "description": "Bytes, or a whole number with a unit: B, KiB, MiB, GiB, TiB (powers of 1024) or kB, MB, GB, TB (powers of 1000).",
            "examples": ["512MiB", "1GiB"],
        })
    }
}

impl JsonSchema for Rate {
    fn schema_name() -> Cow<'static, str> {
        "Rate".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "title": "rate",
            "type": "string",
            "description": "Bits per second (bit, kbit, Mbit, Gbit) or bytes per second (B/s, kB/s, MB/s, GB/s, KiB/s, MiB/s, GiB/s); fractions allowed.",
            "examples": ["1Gbit", "50Mbit", "10MB/s"],
        })
    }
}

impl JsonSchema for Ratio {
    fn schema_name() -> Cow<'static, str> {
        "Ratio".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "title": "ratio",
            "type": ["string", "number"],
            "description": "A percentage (\"1.5%\") or a fraction (0.015), from 0 to 1.",
            "examples": ["1%", 0.01],
        })
    }
}

impl JsonSchema for MacAddr {
    fn schema_name() -> Cow<'static, str> {
        "MacAddr".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "title": "MAC address",
            "type": "string",
            "description": "Six hexadecimal octets separated by colons or dashes.",
            "examples": ["52:54:00:12:34:56"],
        })
    }
}

/// The schema of a `Duration` field read with
/// [`deserialize_duration`](super::deserialize_duration): name it with
/// `#[schemars(with = "ferry_core::config::DurationText")]`.
pub struct DurationText;

impl JsonSchema for DurationText {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "title": "duration",
            "type": "string",
            "description": "A number and a unit (ns, us, ms, s, m, h), or several: \"1m30s\".",
            "examples": ["300ms", "2s", "1m30s"],
        })
    }
}
