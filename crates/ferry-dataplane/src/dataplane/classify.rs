//! The router classifier's maps: rules, classes, counters.

use aya::maps::{Array, PerCpuHashMap};
use ferry_common::names::map;
use ferry_common::{
    classify::{
        ClassCounter, ClassEntry, ClassKey, MAX_CLASSES, MAX_RULES, PolicerState, RouterSettings,
        Rule,
    },
    counters::Direction,
};

use super::{Dataplane, DataplaneError, Result, map_err};

/// Traffic of one class on one interface in one direction, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClassCount {
    pub ifindex: u32,
    pub direction: Direction,
    pub class: u16,
    pub packets: u64,
    pub bytes: u64,
    pub drops: u64,
}

impl Dataplane {
    /// Installs `rules` (in order, first match wins) and the class of
    /// frames no rule matches. Safe to call while traffic flows: a shrinking
    /// rule set is cut before rules are rewritten, a growing one extended
    /// after.
    pub fn set_rules(&mut self, rules: &[Rule], default_class: u16) -> Result<()> {
        if rules.len() > MAX_RULES as usize {
            return Err(DataplaneError::MissingMap("RULES (too many rules)"));
        }
        let n = rules.len() as u32;
        let old = {
            let s: Array<_, RouterSettings> = Array::try_from(self.map(map::ROUTER_SETTINGS)?)
                .map_err(map_err(map::ROUTER_SETTINGS))?;
            s.get(&0, 0)
                .map_err(map_err(map::ROUTER_SETTINGS))?
                .rule_count
        };
        let settings = |count| RouterSettings {
            rule_count: count,
            default_class,
            _pad: 0,
        };
        if n < old {
            self.write_settings(settings(n))?;
        }
        {
            let mut r: Array<_, Rule> =
                Array::try_from(self.map_mut(map::RULES)?).map_err(map_err(map::RULES))?;
            for (i, rule) in rules.iter().enumerate() {
                r.set(i as u32, rule, 0).map_err(map_err(map::RULES))?;
            }
        }
        self.write_settings(settings(n))
    }

    fn write_settings(&mut self, s: RouterSettings) -> Result<()> {
        let mut a: Array<_, RouterSettings> = Array::try_from(self.map_mut(map::ROUTER_SETTINGS)?)
            .map_err(map_err(map::ROUTER_SETTINGS))?;
        a.set(0, s, 0).map_err(map_err(map::ROUTER_SETTINGS))
    }

    /// Sets class `id`'s HTB handle and policer; a changed policer starts
    /// with a full bucket.
    pub fn set_class(&mut self, id: u16, e: ClassEntry) -> Result<()> {
        if u32::from(id) >= MAX_CLASSES || id == 0 {
            return Err(DataplaneError::MissingMap(
                "CLASSES (class id out of range)",
            ));
        }
        let old = {
            let a: Array<_, ClassEntry> =
                Array::try_from(self.map(map::CLASSES)?).map_err(map_err(map::CLASSES))?;
            a.get(&u32::from(id), 0).map_err(map_err(map::CLASSES))?
        };
        {
            let mut a: Array<_, ClassEntry> =
                Array::try_from(self.map_mut(map::CLASSES)?).map_err(map_err(map::CLASSES))?;
            a.set(u32::from(id), e, 0).map_err(map_err(map::CLASSES))?;
        }
        if old.police_rate != e.police_rate || old.police_burst != e.police_burst {
            let mut p: Array<_, PolicerState> =
                Array::try_from(self.map_mut(map::POLICERS)?).map_err(map_err(map::POLICERS))?;
            p.set(
                u32::from(id),
                PolicerState {
                    tokens: e.police_burst as i64,
                    last_ns: 0,
                },
                0,
            )
            .map_err(map_err(map::POLICERS))?;
        }
        Ok(())
    }

    /// Every class counter, sorted.
    pub fn class_counters(&self) -> Result<Vec<ClassCount>> {
        let m: PerCpuHashMap<_, ClassKey, ClassCounter> =
            PerCpuHashMap::try_from(self.map(map::CLASS_COUNTERS)?)
                .map_err(map_err(map::CLASS_COUNTERS))?;
        let mut out = Vec::new();
        for e in m.iter() {
            let (k, v) = e.map_err(map_err(map::CLASS_COUNTERS))?;
            let Some(direction) = Direction::from_u8(k.direction) else {
                continue;
            };
            let (packets, bytes, drops) = v.iter().fold((0, 0, 0), |(p, b, d), c| {
                (p + c.packets, b + c.bytes, d + c.drops)
            });
            out.push(ClassCount {
                ifindex: k.ifindex,
                direction,
                class: k.class,
                packets,
                bytes,
                drops,
            });
        }
        out.sort();
        Ok(out)
    }
}
