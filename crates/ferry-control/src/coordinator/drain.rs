//! Where `ferry drain` sends a host's guests: to a host that has the memory
//! and, for a guest set to Required, can encrypt (as the source must).
//! Largest guests first, each to the candidate with the most memory left,
//! so the guests spread and a big one is not left without room by small
//! ones placed before it.

use crate::protocol::EncryptionMode;

/// A guest to move.
#[derive(Clone, Debug)]
pub struct Leaving {
    pub name: String,
    pub memory: u64,
    pub encryption: EncryptionMode,
}

/// A host that may take guests.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub name: String,
    pub memory_free: u64,
    pub encryption: bool,
}

/// Each guest's destination, or why none will do, in the order given.
pub fn place(
    guests: &[Leaving],
    source_encrypts: bool,
    candidates: &[Candidate],
) -> Vec<(String, Result<String, Unplaceable>)> {
    let mut free: Vec<u64> = candidates.iter().map(|c| c.memory_free).collect();
    let mut order: Vec<usize> = (0..guests.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(guests[i].memory));
    let mut chosen: Vec<Option<Result<String, Unplaceable>>> = vec![None; guests.len()];
    for i in order {
        let g = &guests[i];
        let required = g.encryption == EncryptionMode::Required;
        let fits = |c: usize| {
            free[c] >= g.memory && (!required || (candidates[c].encryption && source_encrypts))
        };
        let best = (0..candidates.len())
            .filter(|&c| fits(c))
            .max_by_key(|&c| (free[c], std::cmp::Reverse(c)));
        chosen[i] = Some(match best {
            Some(c) => {
                free[c] -= g.memory;
                Ok(candidates[c].name.clone())
            }
            None => Err(why_not(g, required, source_encrypts, candidates)),
        });
    }
    guests
        .iter()
        .zip(chosen)
        .map(|(g, c)| (g.name.clone(), c.expect("every guest was looked at")))
        .collect()
}

/// Why no host will do for a guest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unplaceable {
    #[error("no other reachable, uncordoned host to take it")]
    NoHost,
    #[error("its encryption is required and its host cannot encrypt")]
    SourceCannotEncrypt,
    #[error("its encryption is required and no other host can encrypt")]
    NoHostEncrypts,
    #[error("no host that could take it has {0} free (after the guests placed before it)")]
    Memory(crate::config::ByteSize),
}

fn why_not(
    g: &Leaving,
    required: bool,
    source_encrypts: bool,
    candidates: &[Candidate],
) -> Unplaceable {
    if candidates.is_empty() {
        return Unplaceable::NoHost;
    }
    if required && !source_encrypts {
        return Unplaceable::SourceCannotEncrypt;
    }
    let can = |c: &&Candidate| !required || c.encryption;
    if !candidates.iter().any(|c| can(&c)) {
        return Unplaceable::NoHostEncrypts;
    }
    Unplaceable::Memory(crate::config::ByteSize(g.memory))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn g(name: &str, mib: u64, enc: EncryptionMode) -> Leaving {
        Leaving {
            name: name.into(),
            memory: mib * MIB,
            encryption: enc,
        }
    }

    fn c(name: &str, mib: u64, encryption: bool) -> Candidate {
        Candidate {
            name: name.into(),
            memory_free: mib * MIB,
            encryption,
        }
    }

    #[test]
    fn required_guests_go_where_they_can_be_encrypted_and_memory_is_never_overbooked() {
        let guests = [
            g("small", 16, EncryptionMode::Opportunistic),
            g("secret", 64, EncryptionMode::Required),
            g("big", 96, EncryptionMode::Disabled),
            g("small-2", 16, EncryptionMode::Opportunistic),
        ];
        let hosts = [c("plain", 128, false), c("crypto", 96, true)];
        let placed = place(&guests, true, &hosts);
        let to = |n: &str| placed.iter().find(|(g, _)| g == n).unwrap().1.clone();
        assert_eq!(to("secret"), Ok("crypto".into()));
        // big (96) first, to plain (128 free); secret to crypto; the small
        // ones to whichever has most left: crypto 32, plain 32.
        assert_eq!(to("big"), Ok("plain".into()));
        let mut used = std::collections::HashMap::new();
        for (name, to) in &placed {
            let m = guests.iter().find(|x| &x.name == name).unwrap().memory;
            *used.entry(to.clone().unwrap()).or_insert(0) += m;
        }
        for h in &hosts {
            assert!(
                used.get(&h.name).copied().unwrap_or(0) <= h.memory_free,
                "{} overbooked: {used:?}",
                h.name
            );
        }
        assert_eq!(
            placed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["small", "secret", "big", "small-2"]
        );
    }

    #[test]
    fn a_guest_no_host_can_take_says_why() {
        let req = [g("secret", 16, EncryptionMode::Required)];
        let e = place(&req, true, &[c("plain", 1024, false)]);
        assert_eq!(e[0].1, Err(Unplaceable::NoHostEncrypts), "{e:?}");
        let e = place(&req, false, &[c("crypto", 1024, true)]);
        assert_eq!(e[0].1, Err(Unplaceable::SourceCannotEncrypt), "{e:?}");
        let e = place(
            &[g("big", 512, EncryptionMode::Disabled)],
            true,
            &[c("small", 256, true)],
        );
        let why = e[0].1.as_ref().unwrap_err().to_string();
        assert!(why.contains("512MiB free"), "{why}");
        let e = place(&req, true, &[]);
        assert_eq!(e[0].1, Err(Unplaceable::NoHost), "{e:?}");
    }
}
