//! The protocol's own counter: rejections by reason, counted once where
//! they are detected (record reader, handshake). A daemon registers it in
//! the registry its /metrics serves.

use prometheus::{IntCounterVec, Opts, Registry};

use super::ProtocolError;

/// Rejections on migration streams, by reason (a fixed set of labels).
#[derive(Clone)]
pub struct ProtocolMetrics {
    rejections: IntCounterVec,
}

impl Default for ProtocolMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProtocolMetrics {
    pub fn new() -> Self {
        let rejections = IntCounterVec::new(
            Opts::new(
                "ferry_protocol_rejections_total",
                "Migration streams or records rejected, by reason (decrypt = AEAD authentication failure)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        // Every label exists from the start, so a rate() over it works at zero.
        for r in ProtocolError::REASONS {
            rejections.with_label_values(&[r]);
        }
        Self { rejections }
    }

    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.rejections.clone()))
    }

    pub fn reject(&self, e: &ProtocolError) {
        self.rejections.with_label_values(&[e.reason()]).inc();
    }

    pub fn rejected(&self, reason: &str) -> u64 {
        self.rejections.with_label_values(&[reason]).get()
    }
}
