//! Prometheus metrics. Each component owns its metric families (so tests
//! running side by side in one process count only their own events) and a
//! daemon registers them into the registry its /metrics endpoint serves.

pub mod http;
pub mod migration;
pub mod scrape;

/// The protocol counts its own rejections where it detects them.
pub use crate::protocol::ProtocolMetrics;
