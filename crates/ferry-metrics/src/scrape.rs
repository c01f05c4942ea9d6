//! Metrics read at scrape time (kernel maps, netlink statistics): a
//! collector that runs a closure on every scrape and turns what it reports
//! into metric families of the declared names, types and labels.

use std::collections::HashMap;

use prometheus::{
    CounterVec, GaugeVec, Opts,
    core::{Collector, Desc},
    proto::MetricFamily,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One declared family.
#[derive(Clone, Debug)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
}

/// What one scrape found: values by family name and label values.
#[derive(Default)]
pub struct Sample {
    values: HashMap<&'static str, Vec<(Vec<String>, f64)>>,
}

impl Sample {
    pub fn set(&mut self, family: &'static str, labels: &[&str], value: f64) {
        self.values
            .entry(family)
            .or_default()
            .push((labels.iter().map(|s| s.to_string()).collect(), value));
    }
}

/// Runs `read` on every scrape. A failed read leaves its families out of
/// that scrape (Prometheus shows the gap) and is logged.
pub struct ScrapeCollector<F> {
    families: Vec<Family>,
    descs: Vec<Desc>,
    read: F,
}

impl<F, E> ScrapeCollector<F>
where
    F: Fn(&mut Sample) -> Result<(), E> + Send + Sync,
    E: std::error::Error + 'static,
{
    pub fn new(families: Vec<Family>, read: F) -> prometheus::Result<Self> {
        let descs = families
            .iter()
            .map(|f| {
                Desc::new(
                    f.name.into(),
                    f.help.into(),
                    f.labels.iter().map(|l| l.to_string()).collect(),
                    HashMap::new(),
                )
            })
            .collect::<prometheus::Result<_>>()?;
        Ok(Self {
            families,
            descs,
            read,
        })
    }
}

impl<F, E> Collector for ScrapeCollector<F>
where
    F: Fn(&mut Sample) -> Result<(), E> + Send + Sync,
    E: std::error::Error + 'static,
{
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut sample = Sample::default();
        if let Err(e) = (self.read)(&mut sample) {
            tracing::warn!(error = %ferry_core::error::report(&e), "reading metrics at scrape time");
            return Vec::new();
        }
        let mut out = Vec::new();
        for f in &self.families {
            let Some(values) = sample.values.get(f.name) else {
                continue;
            };
            let opts = Opts::new(f.name, f.help);
            let families = match f.kind {
                // Fresh vectors each scrape: the kernel holds the totals.
                Kind::Counter => {
                    let v = CounterVec::new(opts, f.labels).expect("declared family");
                    for (labels, x) in values {
                        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
                        v.with_label_values(&l).inc_by(x.max(0.0));
                    }
                    v.collect()
                }
                Kind::Gauge => {
                    let v = GaugeVec::new(opts, f.labels).expect("declared family");
                    for (labels, x) in values {
                        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
                        v.with_label_values(&l).set(*x);
                    }
                    v.collect()
                }
            };
            out.extend(families);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapes_read_fresh_values_each_time() {
        let n = std::sync::atomic::AtomicU64::new(0);
        let c = ScrapeCollector::new(
            vec![Family {
                name: "ferry_test_packets_total",
                help: "h",
                kind: Kind::Counter,
                labels: &["class"],
            }],
            move |s| {
                let v = n.fetch_add(5, std::sync::atomic::Ordering::Relaxed) + 5;
                s.set("ferry_test_packets_total", &["a"], v as f64);
                Ok::<_, std::io::Error>(())
            },
        )
        .unwrap();
        let r = prometheus::Registry::new();
        r.register(Box::new(c)).unwrap();
        let text = |r: &prometheus::Registry| {
            prometheus::TextEncoder::new()
                .encode_to_string(&r.gather())
                .unwrap()
        };
        assert!(text(&r).contains("ferry_test_packets_total{class=\"a\"} 5\n"));
        assert!(text(&r).contains("ferry_test_packets_total{class=\"a\"} 10\n"));
    }
}
