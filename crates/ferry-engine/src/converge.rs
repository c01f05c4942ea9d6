//! When pre-copy stops: the source's decision after each pass.
//!
//! A pass whose predicted stun fits the downtime limit is not yet the best
//! moment to stun. While each pass still more than halves the dirty set, one
//! more pass costs a fraction of the one before and shrinks the stun by as
//! much; once it no longer does (the guest's hot set, or per-pass overhead),
//! more passes only add time. So the source keeps iterating past the first
//! fit and switches over at the knee of that curve, bounded in passes.

/// A stun predicted shorter than this gains nothing from another pass.
pub const STUN_FLOOR_SECONDS: f64 = 0.001;

/// Passes after the first that fitted the limit, at most.
pub const MAX_KNEE_PASSES: u32 = 8;

/// What the source does after a pre-copy pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Stun the guest and send what is still dirty.
    SwitchOver,
    /// The stun fits the limit but another pass would still shrink it.
    Shrink,
    /// The stun does not fit the limit yet: iterate (throttling per SDPS),
    /// or give up at `max_time`.
    Converge,
}

/// One finished pass, as the decision sees it.
#[derive(Clone, Copy, Debug)]
pub struct PassEnd {
    /// Pages the pass sent.
    pub sent: u64,
    /// Pages the guest dirtied while it ran.
    pub dirtied: u64,
    /// The stun those dirty pages would cost at the pass's rate.
    pub expected_seconds: f64,
    /// The downtime limit in force.
    pub limit_seconds: f64,
    /// Passes since the first that fitted the limit (0 for that one).
    pub fitted_passes: Option<u32>,
    /// `max_time` has passed.
    pub out_of_time: bool,
}

/// The decision after `end`.
pub fn next(end: &PassEnd) -> Next {
    if end.expected_seconds > end.limit_seconds {
        return Next::Converge;
    }
    let at_knee = end.dirtied.saturating_mul(2) > end.sent;
    let enough = end.fitted_passes.is_some_and(|n| n + 1 >= MAX_KNEE_PASSES);
    if at_knee || enough || end.out_of_time || end.expected_seconds <= STUN_FLOOR_SECONDS {
        Next::SwitchOver
    } else {
        Next::Shrink
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(sent: u64, dirtied: u64, expected_ms: f64, fitted: Option<u32>) -> PassEnd {
        PassEnd {
            sent,
            dirtied,
            expected_seconds: expected_ms / 1e3,
            limit_seconds: 0.3,
            fitted_passes: fitted,
            out_of_time: false,
        }
    }

    #[test]
    fn over_the_limit_keeps_converging() {
        assert_eq!(next(&end(262_144, 100_000, 1071.0, None)), Next::Converge);
        let late = PassEnd {
            out_of_time: true,
            ..end(262_144, 100_000, 1071.0, None)
        };
        assert_eq!(
            next(&late),
            Next::Converge,
            "max_time is the caller's give-up"
        );
    }

    #[test]
    fn a_set_that_still_halves_is_shrunk_before_the_stun() {
        // The demo guest's pass 1: 105k pages sent, 13.8k dirtied, 35 ms.
        assert_eq!(next(&end(105_392, 13_784, 35.1, Some(0))), Next::Shrink);
        assert_eq!(next(&end(13_784, 1_900, 5.0, Some(1))), Next::Shrink);
    }

    #[test]
    fn the_knee_a_floor_a_bound_or_time_switches_over() {
        // A hot set: the pass dirtied more than half of what it sent.
        assert_eq!(next(&end(1_000, 900, 3.0, Some(0))), Next::SwitchOver);
        // An idle guest: nothing dirty.
        assert_eq!(next(&end(262_144, 0, 0.0, Some(0))), Next::SwitchOver);
        // Tiny: below the floor.
        assert_eq!(next(&end(300, 40, 0.5, Some(2))), Next::SwitchOver);
        // Shrinking forever (a pass always halves): bounded.
        assert_eq!(
            next(&end(1_000, 100, 10.0, Some(MAX_KNEE_PASSES - 2))),
            Next::Shrink
        );
        assert_eq!(
            next(&end(1_000, 100, 10.0, Some(MAX_KNEE_PASSES - 1))),
            Next::SwitchOver
        );
        let late = PassEnd {
            out_of_time: true,
            ..end(13_784, 1_900, 5.0, Some(1))
        };
        assert_eq!(next(&late), Next::SwitchOver, "fits: stun, not give up");
    }
}
