//! Prometheus metrics. Each component owns its metric families (so tests
//! running side by side in one process count only their own events) and a
//! daemon registers them into the registry its /metrics endpoint serves.
//!
//! ferry-metrics depends on ferry-core, ferry-protocol (whose rejection
//! counters it registers) and ferry-engine (whose results it exports) only.

pub mod http;
pub mod migration;
pub mod scrape;

use ferry_engine as engine;
use ferry_protocol as protocol;

/// The protocol counts its own rejections where it detects them.
pub use crate::protocol::ProtocolMetrics;
