//! A class's WAN emulation: one-way delay, jitter, loss, rate.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Invalid, Rate, Ratio, deserialize_duration, serialize_duration};

/// What a delay line does to a class's frames leaving one interface.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WanConfig {
    /// One-way delay added to every frame.
    #[serde(
        deserialize_with = "deserialize_duration",
        serialize_with = "serialize_duration"
    )]
    #[schemars(with = "ferry_core::config::DurationText")]
    pub delay: Duration,
    /// Spread of the delay: half-width for `uniform`, standard deviation
    /// for `normal`.
    #[serde(
        default,
        deserialize_with = "deserialize_duration",
        serialize_with = "serialize_duration"
    )]
    #[schemars(with = "ferry_core::config::DurationText")]
    pub jitter: Duration,
    #[serde(default)]
    pub distribution: Distribution,
    /// Let jitter reorder frames (a frame may overtake one sent before it).
    /// Off, a frame never leaves before the one ahead of it, as on a real
    /// link where jitter comes from queues.
    #[serde(default)]
    pub reorder: bool,
    #[serde(default)]
    pub loss: Option<Loss>,
    /// The link's rate: frames are serialised at it before the delay.
    #[serde(default)]
    pub rate: Option<Rate>,
    /// Most frames held at once; beyond it frames are dropped (queue_full).
    #[serde(default = "default_limit")]
    pub limit: u32,
    #[schemars(example = 42)]
    /// Seed of the loss and jitter generator, for repeatable runs (default:
    /// random).
    #[serde(default)]
    pub seed: Option<u64>,
}

fn default_limit() -> u32 {
    100_000
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// delay ± jitter, every value equally likely.
    #[default]
    Uniform,
    /// Gaussian around delay with standard deviation jitter, cut at 0 and at
    /// delay + 4 jitter.
    Normal,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(try_from = "LossYaml", into = "LossYaml")]
pub enum Loss {
    /// Each frame lost independently with this probability.
    Random(Ratio),
    /// Gilbert's two-state model: from the good state a frame enters the
    /// lossy state with probability `enter`, from it it leaves with `exit`;
    /// frames in the lossy state are lost. Mean loss is enter/(enter+exit),
    /// mean burst length 1/exit.
    Burst { enter: Ratio, exit: Ratio },
}

/// `loss: {random: 1%}` or `loss: {burst: {enter: 1%, exit: 25%}}`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct LossYaml {
    /// Each frame lost independently with this probability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    random: Option<Ratio>,
    /// Gilbert's two-state model: bursts of loss (mean loss
    /// enter/(enter+exit), mean burst 1/exit frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    burst: Option<BurstYaml>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct BurstYaml {
    /// Probability of entering the lossy state, per frame.
    enter: Ratio,
    /// Probability of leaving it, per frame.
    exit: Ratio,
}

impl TryFrom<LossYaml> for Loss {
    type Error = &'static str;
    fn try_from(y: LossYaml) -> Result<Self, Self::Error> {
        match (y.random, y.burst) {
            (Some(p), None) => Ok(Loss::Random(p)),
            (None, Some(b)) => Ok(Loss::Burst {
                enter: b.enter,
                exit: b.exit,
            }),
            _ => Err("give one of random or burst"),
        }
    }
}

impl From<Loss> for LossYaml {
    fn from(l: Loss) -> Self {
        match l {
            Loss::Random(p) => LossYaml {
                random: Some(p),
                burst: None,
            },
            Loss::Burst { enter, exit } => LossYaml {
                random: None,
                burst: Some(BurstYaml { enter, exit }),
            },
        }
    }
}

impl Loss {
    /// The long-run fraction of frames lost.
    pub fn mean(&self) -> f64 {
        match *self {
            Loss::Random(p) => p.0,
            Loss::Burst { enter, exit } => {
                if enter.0 + exit.0 == 0.0 {
                    0.0
                } else {
                    enter.0 / (enter.0 + exit.0)
                }
            }
        }
    }
}

/// Longest delay or jitter a line accepts.
pub const MAX_DELAY: Duration = Duration::from_secs(10);

impl WanConfig {
    pub fn validate(&self, field: &str) -> Result<(), Invalid> {
        if self.delay > MAX_DELAY {
            return Err(Invalid::new(
                format!("{field}.delay"),
                format!("at most {MAX_DELAY:?}"),
            ));
        }
        if self.jitter > MAX_DELAY {
            return Err(Invalid::new(
                format!("{field}.jitter"),
                format!("at most {MAX_DELAY:?}"),
            ));
        }
        if self.distribution == Distribution::Uniform && self.jitter > self.delay {
            return Err(Invalid::new(
                format!("{field}.jitter"),
                "uniform jitter larger than the delay would need negative delays",
            ));
        }
        if let Some(Loss::Burst { exit, .. }) = self.loss
            && exit.0 == 0.0
        {
            return Err(Invalid::new(
                format!("{field}.loss.burst.exit"),
                "a burst that is never left loses everything after it starts",
            ));
        }
        if !(1..=1_000_000).contains(&self.limit) {
            return Err(Invalid::new(
                format!("{field}.limit"),
                "1 to 1000000 frames",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct W {
        wan: WanConfig,
    }
    impl crate::config::Validate for W {
        fn validate(&self) -> Result<(), Invalid> {
            self.wan.validate("wan")
        }
    }

    #[test]
    fn reads_every_setting_and_refuses_nonsense_with_its_field() {
        let w: W = crate::config::from_str(
            "wan: {delay: 75ms, jitter: 2ms, distribution: normal, loss: {burst: {enter: 1%, exit: 25%}}, rate: 1Gbit, seed: 7}\n",
            "router.yaml",
        )
        .unwrap();
        assert_eq!(w.wan.delay, Duration::from_millis(75));
        assert_eq!(w.wan.distribution, Distribution::Normal);
        assert!((w.wan.loss.unwrap().mean() - 0.01 / 0.26).abs() < 1e-12);
        assert_eq!(w.wan.limit, 100_000);
        let w: W =
            crate::config::from_str("wan: {delay: 5ms, loss: {random: 0.5%}}\n", "r.yaml").unwrap();
        assert_eq!(w.wan.loss, Some(Loss::Random(Ratio(0.005))));
        for (yaml, want) in [
            (
                "wan: {delay: 5ms, jitter: 6ms}\n",
                "r.yaml:1:19: wan.jitter: uniform jitter",
            ),
            ("wan: {delay: 11s}\n", "r.yaml:1:7: wan.delay: at most"),
            (
                "wan: {delay: 1ms, loss: {burst: {enter: 1%, exit: 0}}}\n",
                "r.yaml:1:45: wan.loss.burst.exit",
            ),
            ("wan: {delay: 1ms, loss: {random: 150%}}\n", "out of range"),
        ] {
            let err = crate::config::from_str::<W>(yaml, "r.yaml")
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(want), "{yaml}: {err}");
        }
    }
}
