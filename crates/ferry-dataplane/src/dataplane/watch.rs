//! The announcement watch: its ring buffer of events and its MAC table.

use ferry_common::names::{map, program};
use std::{
    os::fd::{AsFd, AsRawFd},
    time::Duration,
};

use aya::{
    maps::{HashMap, MapData, RingBuf},
    programs::TcAttachType,
};
use ferry_common::watch::{MacEntry, MacKey, WatchEvent};

use super::{Dataplane, DataplaneError, Result, map_err};

/// Reads watch events as the programs produce them.
pub struct WatchEvents {
    ring: RingBuf<MapData>,
}

impl WatchEvents {
    /// The next event, waiting at most `timeout` for one.
    pub fn next(&mut self, timeout: Duration) -> Option<WatchEvent> {
        if let Some(e) = self.take() {
            return Some(e);
        }
        let mut pfd = libc::pollfd {
            fd: self.ring.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe {
            libc::poll(
                &mut pfd,
                1,
                timeout.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        self.take()
    }

    fn take(&mut self) -> Option<WatchEvent> {
        let item = self.ring.next()?;
        if item.len() < std::mem::size_of::<WatchEvent>() {
            return None;
        }
        // SAFETY: the programs submit whole WatchEvents; read unaligned.
        Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<WatchEvent>()) })
    }
}

impl Dataplane {
    /// Watches frames arriving on `ifname` for announcements and MAC moves.
    pub fn attach_watch(&mut self, ifname: &str) -> Result<()> {
        self.attach_tc(program::WATCH_INGRESS, ifname, TcAttachType::Ingress)
            .map(drop)
    }

    /// Takes the event ring buffer (once).
    pub fn watch_events(&mut self) -> Result<WatchEvents> {
        let map = self
            .ebpf_mut()
            .take_map(map::WATCH_EVENTS)
            .ok_or(DataplaneError::MissingMap("WATCH_EVENTS"))?;
        Ok(WatchEvents {
            ring: RingBuf::try_from(map).map_err(map_err(map::WATCH_EVENTS))?,
        })
    }

    /// Every MAC the watch has seen.
    pub fn mac_table(&self) -> Result<Vec<(MacKey, MacEntry)>> {
        // aya reads an LRU hash through its HashMap view.
        let m: HashMap<_, MacKey, MacEntry> =
            HashMap::try_from(self.map(map::MAC_TABLE)?).map_err(map_err(map::MAC_TABLE))?;
        let mut out = Vec::new();
        for e in m.iter() {
            out.push(e.map_err(map_err(map::MAC_TABLE))?);
        }
        Ok(out)
    }
}
