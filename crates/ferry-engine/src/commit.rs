//! Who says GO once the destination is READY.
//!
//! Alone, a source decides itself: READY is enough. Under a coordinator
//! the decision is the coordinator's (its store records GO and the
//! guest's new owner in one transaction first), so a source waits for it
//! at READY, for as long as the destination holds the guest ready. The
//! destination gives up on its own after its switch-over timeout, and
//! then resuming here is safe whatever any coordinator decided: GO never
//! reached the destination.

use std::{
    sync::{Condvar, Mutex},
    time::{Duration, Instant},
};

use crate::MigrationError;

/// A coordinator's word on a migration whose destination is READY.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Go,
    /// Resume the guest on the source; the reason is the coordinator's.
    Abort(String),
}

/// The authority over a migration's switch-over.
pub trait Commit: Send + Sync {
    /// The destination is READY: the decision is asked for (once).
    fn ready(&self);
    /// The decision, if one is taken within `wait`.
    fn decision(&self, wait: Duration) -> Option<Decision>;
}

/// One decision, taken once and kept: a second that differs is refused.
#[derive(Default)]
pub struct DecisionSlot {
    taken: Mutex<Option<Decision>>,
    cv: Condvar,
}

impl DecisionSlot {
    /// Takes `d`, or returns the decision already taken if it differs
    /// (the same one twice is no change: a new leader may repeat GO).
    pub fn decide(&self, d: Decision) -> Result<(), Decision> {
        let mut t = self.taken.lock().expect("decision");
        match &*t {
            Some(old) if *old != d => Err(old.clone()),
            Some(_) => Ok(()),
            None => {
                *t = Some(d);
                self.cv.notify_all();
                Ok(())
            }
        }
    }

    /// The decision, waiting up to `wait` for one.
    pub fn wait(&self, wait: Duration) -> Option<Decision> {
        let t = self.taken.lock().expect("decision");
        let (t, _) = self
            .cv
            .wait_timeout_while(t, wait, |t| t.is_none())
            .expect("decision");
        t.clone()
    }
}

/// Waits at READY for `commit`'s decision: Ok on GO, the reason on an
/// abort. `destination` is polled between waits and fails when the
/// destination gave up (it discards the guest then, so the source resumes
/// it). `bound` caps the wait should the destination's give-up never
/// show (a link dead without a reset).
pub(crate) fn await_go(
    commit: &dyn Commit,
    id: &ferry_protocol::MigrationId,
    bound: Duration,
    mut destination: impl FnMut() -> Result<(), MigrationError>,
) -> Result<(), MigrationError> {
    commit.ready();
    tracing::info!(migration = %id, "migration: destination ready, waiting for the coordinator's GO");
    let until = Instant::now() + bound;
    loop {
        match commit.decision(Duration::from_millis(50)) {
            Some(Decision::Go) => return Ok(()),
            Some(Decision::Abort(why)) => return Err(MigrationError::NotCommitted(why)),
            None => {}
        }
        destination()?;
        if Instant::now() >= until {
            return Err(MigrationError::NotCommitted(format!(
                "no decision from the coordinator within {bound:?} of READY"
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_first_decision_stands_and_the_same_one_again_is_no_change() {
        let s = DecisionSlot::default();
        assert_eq!(s.wait(Duration::from_millis(1)), None);
        s.decide(Decision::Go).unwrap();
        s.decide(Decision::Go).unwrap();
        assert_eq!(s.decide(Decision::Abort("late".into())), Err(Decision::Go));
        assert_eq!(s.wait(Duration::ZERO), Some(Decision::Go));
    }

    #[test]
    fn a_waiter_wakes_on_the_decision() {
        let s = Arc::new(DecisionSlot::default());
        let t = {
            let s = s.clone();
            std::thread::spawn(move || s.wait(Duration::from_secs(30)))
        };
        std::thread::sleep(Duration::from_millis(20));
        s.decide(Decision::Abort("no quorum".into())).unwrap();
        assert_eq!(t.join().unwrap(), Some(Decision::Abort("no quorum".into())));
    }

    struct Never;
    impl Commit for Never {
        fn ready(&self) {}
        fn decision(&self, wait: Duration) -> Option<Decision> {
            std::thread::sleep(wait.min(Duration::from_millis(1)));
            None
        }
    }

    #[test]
    fn the_wait_ends_when_the_destination_gives_up_or_at_its_bound() {
        let id = ferry_protocol::MigrationId::generate();
        let mut polls = 0;
        let e = await_go(&Never, &id, Duration::from_secs(60), || {
            polls += 1;
            if polls == 3 {
                Err(MigrationError::Destination(
                    "no GO from the source in time".into(),
                ))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert!(matches!(e, MigrationError::Destination(_)), "{e}");
        let e = await_go(&Never, &id, Duration::from_millis(5), || Ok(())).unwrap_err();
        assert!(matches!(e, MigrationError::NotCommitted(_)), "{e}");
    }
}
