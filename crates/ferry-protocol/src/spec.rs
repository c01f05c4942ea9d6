//! The migration specification the coordinator creates and hands to the
//! source and destination hosts, and how the encryption mode is resolved.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroize;

use super::{aead::KEY_LEN, keys::MigrationKey};
use ferry_core::config::{Invalid, deserialize_duration, serialize_duration};

/// A migration's identity: 128 random bits, printed as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MigrationId(pub [u8; 16]);

impl MigrationId {
    pub fn generate() -> Self {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).expect("the OS random source failed");
        MigrationId(b)
    }
}

impl fmt::Display for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MigrationId({self})")
    }
}

/// A spec, a migration id or a limit change that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid migration id {0:?}: expected 32 hex digits")]
    BadId(String),
    #[error("unknown memory check {0:?}: expected off, pages or full (true means full, false off)")]
    UnknownMemoryCheck(String),
    #[error("nothing to change: give a bandwidth or a downtime limit")]
    NothingToChange,
    #[error("a downtime limit must be more than 0: no switch-over fits in no time")]
    ZeroDowntime,
    #[error("spec {id}: transport {transport} with{} a key", if *.keyed { "" } else { "out" })]
    KeyMismatch {
        id: MigrationId,
        transport: Transport,
        keyed: bool,
    },
    #[error("spec {id}: {streams} streams (1..=64)")]
    Streams { id: MigrationId, streams: u16 },
    #[error("spec {id}: the machine has {machine} bytes of memory, the spec says {spec}")]
    MachineMemory {
        id: MigrationId,
        machine: u64,
        spec: u64,
    },
    #[error("spec {id}: memory {memory} is not a positive multiple of 4 KiB")]
    Memory { id: MigrationId, memory: u64 },
    #[error("spec {id}: limits.{field}: {message}")]
    Limits {
        id: MigrationId,
        field: String,
        message: String,
    },
}

impl FromStr for MigrationId {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut b = [0u8; 16];
        hex::decode_to_slice(s, &mut b).map_err(|_| SpecError::BadId(s.to_string()))?;
        Ok(MigrationId(b))
    }
}

impl Serialize for MigrationId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MigrationId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A guest's Encrypted-vMotion-style setting. Ordered by strength
/// (Disabled < Opportunistic < Required): a guest's setting is a floor.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum EncryptionMode {
    /// Never encrypt: the guest's memory crosses the network in the clear.
    Disabled,
    /// Encrypt when both hosts can; otherwise migrate in the clear.
    #[default]
    Opportunistic,
    /// Encrypt, or refuse to migrate.
    Required,
}

impl fmt::Display for EncryptionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EncryptionMode::Disabled => "disabled",
            EncryptionMode::Opportunistic => "opportunistic",
            EncryptionMode::Required => "required",
        })
    }
}

/// What actually protects a migration's streams, decided by the coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    Plaintext,
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
}

impl Transport {
    pub fn encrypted(self) -> bool {
        self == Transport::Aes256Gcm
    }

    pub fn wire(self) -> u8 {
        match self {
            Transport::Plaintext => 0,
            Transport::Aes256Gcm => 1,
        }
    }

    pub fn from_wire(b: u8) -> Option<Self> {
        match b {
            0 => Some(Transport::Plaintext),
            1 => Some(Transport::Aes256Gcm),
            _ => None,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Plaintext => "plaintext",
            Transport::Aes256Gcm => "aes-256-gcm",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModeError {
    #[error(
        "guest {guest} requires encrypted migration, but {host} cannot encrypt: refused before any memory moved"
    )]
    EncryptionRequired { guest: String, host: String },
    #[error(
        "guest {guest} is set to encryption {setting}: a migration may ask for more ({requested} is less); \
         change the guest's setting to move it with less"
    )]
    BelowSetting {
        guest: String,
        setting: EncryptionMode,
        requested: EncryptionMode,
    },
}

/// The mode of one migration: the guest's own setting, or what the client
/// asked for if that is stronger. Asking for less is refused, never obeyed:
/// a client cannot talk a Required guest down to plaintext.
pub fn migration_mode(
    guest: &str,
    setting: EncryptionMode,
    requested: Option<EncryptionMode>,
) -> Result<EncryptionMode, ModeError> {
    match requested {
        None => Ok(setting),
        Some(r) if r >= setting => Ok(r),
        Some(r) => Err(ModeError::BelowSetting {
            guest: guest.to_string(),
            setting,
            requested: r,
        }),
    }
}

/// Resolves the transport from the guest's setting and both hosts'
/// capabilities. Only the coordinator calls this; hosts follow the spec and
/// never fall back on their own, so nobody in the path can talk a stream
/// down to plaintext.
pub fn resolve_transport(
    guest: &str,
    mode: EncryptionMode,
    source: (&str, bool),
    destination: (&str, bool),
) -> Result<Transport, ModeError> {
    let both = source.1 && destination.1;
    match mode {
        EncryptionMode::Disabled => Ok(Transport::Plaintext),
        EncryptionMode::Opportunistic if both => Ok(Transport::Aes256Gcm),
        EncryptionMode::Opportunistic => Ok(Transport::Plaintext),
        EncryptionMode::Required if both => Ok(Transport::Aes256Gcm),
        EncryptionMode::Required => {
            let host = if !source.1 { source.0 } else { destination.0 };
            Err(ModeError::EncryptionRequired {
                guest: guest.to_string(),
                host: host.to_string(),
            })
        }
    }
}

/// Limits and knobs of one migration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Switch over once the predicted stun time fits this (QEMU's default).
    #[serde(
        default = "default_downtime",
        deserialize_with = "deserialize_duration",
        serialize_with = "serialize_duration"
    )]
    #[schemars(with = "ferry_core::config::DurationText")]
    pub downtime_limit: Duration,
    /// Give up (guest stays on the source) after this long.
    #[serde(
        default = "default_max_time",
        deserialize_with = "deserialize_duration",
        serialize_with = "serialize_duration"
    )]
    #[schemars(with = "ferry_core::config::DurationText")]
    pub max_time: Duration,
    /// Largest record payload, in bytes.
    #[serde(default = "default_record")]
    pub max_record: u32,
    #[schemars(example = 125000000)]
    /// Bytes per second across all streams (None: as fast as the path goes).
    #[serde(default)]
    pub bandwidth: Option<u64>,
    /// SDPS: first throttle step, increment per non-converging pass, ceiling (percent).
    #[serde(default = "default_throttle_initial")]
    pub throttle_initial: u8,
    /// SDPS: throttle added per pass that does not converge (percent).
    #[serde(default = "default_throttle_step")]
    pub throttle_step: u8,
    /// SDPS: the most a guest's vCPUs are throttled (percent).
    #[serde(default = "default_throttle_max")]
    pub throttle_max: u8,
    /// How the destination's copy of memory is checked against the source's.
    #[serde(default)]
    pub verify_memory: MemoryCheck,
    /// How long each side of the switch-over waits for the other's word
    /// (READY after PREPARE, RESUMED after GO). It bounds how long a guest
    /// stays stunned on its source when a word is lost: about twice this,
    /// plus the outcome query, before the source resumes it or learns it
    /// runs on the destination.
    #[serde(
        default = "default_switchover_timeout",
        deserialize_with = "deserialize_duration",
        serialize_with = "serialize_duration"
    )]
    #[schemars(with = "ferry_core::config::DurationText")]
    pub switchover_timeout: Duration,
}

/// A change to a running migration's limits (`ferry migrate-set`, as
/// `virsh migrate-setspeed` / `migrate-setmaxdowntime`). What it leaves
/// out stays as it was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitChange {
    /// The cap across all streams, in bytes per second; 0 lifts it.
    #[serde(default)]
    pub bandwidth: Option<u64>,
    /// The downtime limit, in microseconds.
    #[serde(default)]
    pub downtime_limit_us: Option<u64>,
}

/// "bandwidth 25.0 MB/s, downtime limit 50 ms": what a change sets.
impl std::fmt::Display for LimitChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        match self.bandwidth {
            Some(0) => parts.push("bandwidth no longer capped".to_string()),
            Some(b) => parts.push(format!("bandwidth capped at {:.1} MB/s", b as f64 / 1e6)),
            None => {}
        }
        if let Some(us) = self.downtime_limit_us {
            parts.push(format!("downtime limit {} ms", us as f64 / 1e3));
        }
        f.write_str(&parts.join(", "))
    }
}

impl LimitChange {
    pub fn is_empty(&self) -> bool {
        self.bandwidth.is_none() && self.downtime_limit_us.is_none()
    }

    /// What no running migration can be given.
    pub fn check(&self) -> Result<(), SpecError> {
        if self.is_empty() {
            return Err(SpecError::NothingToChange);
        }
        if self.downtime_limit_us == Some(0) {
            return Err(SpecError::ZeroDowntime);
        }
        Ok(())
    }
}

/// How a migration checks that the destination's memory is the source's.
/// Each record is already authenticated (or checksummed); this checks the
/// whole: that every page's last version arrived, and that the dirty log
/// missed no write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryCheck {
    /// Nothing beyond the records' tags and checksums.
    Off,
    /// Each page's digest is kept as it is sent and as it is received; at
    /// the stun the two sides compare digests of those lists (8 bytes per
    /// page, some 0.1 ms per GiB), and a mismatch fails the migration
    /// with the guest kept on the source. After the release, outside the
    /// stun, the source re-reads its memory against what it sent: a write
    /// the dirty log missed is reported (the migration's
    /// `memory_identical`, its note and the log) though it cannot be undone.
    #[default]
    Pages,
    /// Both sides hash all of memory in the stun (some 100 ms per GiB):
    /// even a write the dirty log missed fails the migration before GO.
    Full,
}

impl MemoryCheck {
    pub fn name(self) -> &'static str {
        match self {
            MemoryCheck::Off => "off",
            MemoryCheck::Pages => "pages",
            MemoryCheck::Full => "full",
        }
    }

    pub fn parse(s: &str) -> Result<Self, SpecError> {
        match s {
            "off" | "false" => Ok(MemoryCheck::Off),
            "pages" => Ok(MemoryCheck::Pages),
            "full" | "true" => Ok(MemoryCheck::Full),
            other => Err(SpecError::UnknownMemoryCheck(other.to_string())),
        }
    }
}

// Accepts the names and, as older files say, true (full) and false (off).
impl<'de> Deserialize<'de> for MemoryCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Bool(bool),
            Name(String),
        }
        match Repr::deserialize(d)? {
            Repr::Bool(true) => Ok(MemoryCheck::Full),
            Repr::Bool(false) => Ok(MemoryCheck::Off),
            Repr::Name(s) => MemoryCheck::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

fn default_downtime() -> Duration {
    Duration::from_millis(300)
}
fn default_max_time() -> Duration {
    Duration::from_secs(600)
}
fn default_switchover_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_record() -> u32 {
    256 * 1024
}
fn default_throttle_initial() -> u8 {
    20
}
fn default_throttle_step() -> u8 {
    10
}
fn default_throttle_max() -> u8 {
    99
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            downtime_limit: default_downtime(),
            max_time: default_max_time(),
            max_record: default_record(),
            bandwidth: None,
            throttle_initial: default_throttle_initial(),
            throttle_step: default_throttle_step(),
            throttle_max: default_throttle_max(),
            verify_memory: MemoryCheck::default(),
            switchover_timeout: default_switchover_timeout(),
        }
    }
}

/// Upper bound on a record payload any host accepts, whatever a spec says.
pub const MAX_RECORD_LIMIT: u32 = 16 * 1024 * 1024;

impl Limits {
    /// What no migration can run with, wherever the limits come from (a
    /// config file, the command line, a spec on the wire).
    pub fn check(&self) -> Result<(), Invalid> {
        if self.downtime_limit.is_zero() {
            return Err(Invalid::new(
                "downtime_limit",
                "must be more than 0: no switch-over fits in no time",
            ));
        }
        if self.max_time.is_zero() {
            return Err(Invalid::new("max_time", "must be more than 0"));
        }
        if self.downtime_limit > self.max_time {
            return Err(Invalid::new(
                "downtime_limit",
                format!(
                    "{:?} is longer than max_time ({:?})",
                    self.downtime_limit, self.max_time
                ),
            ));
        }
        if self.switchover_timeout < Duration::from_millis(100)
            || self.switchover_timeout > Duration::from_secs(600)
        {
            return Err(Invalid::new(
                "switchover_timeout",
                format!(
                    "{:?} is outside 100ms..=10m (it bounds how long a guest can stay stunned)",
                    self.switchover_timeout
                ),
            ));
        }
        if self.max_record < 64 * 1024 || self.max_record > MAX_RECORD_LIMIT {
            return Err(Invalid::new(
                "max_record",
                format!("{} is outside 64KiB..=16MiB", self.max_record),
            ));
        }
        if self.bandwidth == Some(0) {
            return Err(Invalid::new(
                "bandwidth",
                "must be more than 0 (leave it out for no limit)",
            ));
        }
        if self.throttle_max > 99 || self.throttle_initial > self.throttle_max {
            return Err(Invalid::new(
                "throttle_initial",
                "throttle_initial <= throttle_max <= 99",
            ));
        }
        Ok(())
    }
}

/// One end of a migration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub host: String,
    /// Where the host's migration listener accepts streams.
    pub migration: SocketAddr,
}

/// Everything both hosts need to run one migration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MigrationSpec {
    pub id: MigrationId,
    pub guest: String,
    /// Guest memory size in bytes (a multiple of 4 KiB).
    pub memory: u64,
    pub source: Endpoint,
    pub destination: Endpoint,
    /// This migration's mode: the guest's setting, or stronger if the
    /// client asked (see [`migration_mode`]).
    pub mode: EncryptionMode,
    /// The guest's own setting, which travels with it unchanged whatever
    /// this migration's mode.
    pub setting: EncryptionMode,
    /// What the coordinator decided.
    pub transport: Transport,
    /// Present exactly when `transport` is encrypted.
    #[serde(default, with = "key_hex", skip_serializing_if = "Option::is_none")]
    pub key: Option<MigrationKey>,
    pub nonce: u64,
    pub streams: u16,
    pub limits: Limits,
    /// What the streams carry. None: ferry's own page stream. Some: a QEMU
    /// guest's own migration channels (the main channel on stream 0, one
    /// multifd channel on each further stream), and the device model the
    /// destination starts to receive them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<ferry_core::machine::QemuMachine>,
}

impl MigrationSpec {
    /// Internal consistency, checked by every host before it acts on a spec.
    pub fn check(&self) -> Result<(), SpecError> {
        let id = self.id;
        if self.transport.encrypted() != self.key.is_some() {
            return Err(SpecError::KeyMismatch {
                id,
                transport: self.transport,
                keyed: self.key.is_some(),
            });
        }
        if self.streams == 0 || self.streams > 64 {
            return Err(SpecError::Streams {
                id,
                streams: self.streams,
            });
        }
        if let Some(m) = &self.machine
            && m.memory != self.memory
        {
            return Err(SpecError::MachineMemory {
                id,
                machine: m.memory,
                spec: self.memory,
            });
        }
        if self.memory == 0 || !self.memory.is_multiple_of(4096) {
            return Err(SpecError::Memory {
                id,
                memory: self.memory,
            });
        }
        if let Err(i) = self.limits.check() {
            return Err(SpecError::Limits {
                id,
                field: i.field,
                message: i.message,
            });
        }
        Ok(())
    }
}

/// The key as 64 hex digits, decoded straight from the borrowed input into
/// the key array: no intermediate String holds key material.
mod key_hex {
    use super::*;

    pub fn serialize<S: Serializer>(key: &Option<MigrationKey>, s: S) -> Result<S::Ok, S::Error> {
        match key {
            None => s.serialize_none(),
            Some(k) => {
                let mut buf = [0u8; KEY_LEN * 2];
                hex::encode_to_slice(k.expose(), &mut buf).expect("sizes match");
                let r = s.serialize_str(std::str::from_utf8(&buf).expect("hex is ASCII"));
                buf.zeroize();
                r
            }
        }
    }

    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<MigrationKey>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a 256-bit key as 64 hex digits")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(V)
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            // The error never echoes the input: it might be most of a key.
            MigrationKey::from_hex(s)
                .map(Some)
                .ok_or_else(|| E::custom("key is not 64 hex digits"))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MigrationKey>, D::Error> {
        d.deserialize_option(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_check_reads_its_names_and_the_old_booleans() {
        let read = |v: &str| serde_json::from_str::<MemoryCheck>(v).map_err(|e| e.to_string());
        assert_eq!(read("\"pages\""), Ok(MemoryCheck::Pages));
        assert_eq!(read("\"full\""), Ok(MemoryCheck::Full));
        assert_eq!(read("\"off\""), Ok(MemoryCheck::Off));
        assert_eq!(read("true"), Ok(MemoryCheck::Full));
        assert_eq!(read("false"), Ok(MemoryCheck::Off));
        let e = read("\"some\"").unwrap_err();
        assert!(e.contains("expected off, pages or full"), "{e}");
        assert_eq!(Limits::default().verify_memory, MemoryCheck::Pages);
        let json = serde_json::to_string(&Limits::default()).unwrap();
        assert!(json.contains("\"verify_memory\":\"pages\""), "{json}");
    }

    fn spec(transport: Transport, key: Option<MigrationKey>) -> MigrationSpec {
        MigrationSpec {
            id: MigrationId([9; 16]),
            guest: "g".into(),
            memory: 1 << 20,
            source: Endpoint {
                host: "a".into(),
                migration: "127.0.0.1:1".parse().unwrap(),
            },
            destination: Endpoint {
                host: "b".into(),
                migration: "127.0.0.1:2".parse().unwrap(),
            },
            mode: EncryptionMode::Opportunistic,
            setting: EncryptionMode::Opportunistic,
            transport,
            key,
            nonce: 5,
            streams: 2,
            limits: Limits::default(),
            machine: None,
        }
    }

    #[test]
    fn mode_resolution_matches_the_paper() {
        use EncryptionMode::*;
        use Transport::*;
        let r = |m, s, d| resolve_transport("g", m, ("a", s), ("b", d));
        assert_eq!(r(Disabled, true, true), Ok(Plaintext));
        assert_eq!(r(Opportunistic, true, true), Ok(Aes256Gcm));
        assert_eq!(r(Opportunistic, true, false), Ok(Plaintext));
        assert_eq!(r(Required, true, true), Ok(Aes256Gcm));
        let e = r(Required, true, false).unwrap_err();
        assert_eq!(
            e,
            ModeError::EncryptionRequired {
                guest: "g".into(),
                host: "b".into()
            }
        );
        assert!(e.to_string().contains("before any memory moved"));
        assert!(
            matches!(r(Required, false, true), Err(ModeError::EncryptionRequired { host, .. }) if host == "a")
        );
    }

    #[test]
    fn every_setting_request_and_capability_gives_the_floor_or_a_refusal() {
        use EncryptionMode::*;
        let modes = [Disabled, Opportunistic, Required];
        for setting in modes {
            for requested in [None, Some(Disabled), Some(Opportunistic), Some(Required)] {
                for (src, dst) in [(true, true), (true, false), (false, true), (false, false)] {
                    let case = format!(
                        "setting {setting}, --mode {requested:?}, hosts encrypt {src}/{dst}"
                    );
                    let mode = migration_mode("g", setting, requested);
                    let want = requested.map_or(setting, |r| r.max(setting));
                    if requested.is_some_and(|r| r < setting) {
                        assert!(
                            matches!(&mode, Err(ModeError::BelowSetting { .. })),
                            "{case}: expected a refusal, got {mode:?}"
                        );
                        continue;
                    }
                    assert_eq!(mode, Ok(want), "{case}");
                    let t = resolve_transport("g", want, ("a", src), ("b", dst));
                    let both = src && dst;
                    let expect = match want {
                        Disabled => Ok(Transport::Plaintext),
                        Opportunistic if both => Ok(Transport::Aes256Gcm),
                        Opportunistic => Ok(Transport::Plaintext),
                        Required if both => Ok(Transport::Aes256Gcm),
                        Required => Err(()),
                    };
                    assert_eq!(t.clone().map_err(|_| ()), expect, "{case}");
                    // Never weaker than the guest's own setting allows.
                    if setting == Required {
                        assert!(
                            !matches!(t, Ok(Transport::Plaintext)),
                            "{case}: a Required guest went in plaintext"
                        );
                    }
                }
            }
        }
        let e = migration_mode("db-1", Required, Some(Disabled)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "guest db-1 is set to encryption required: a migration may ask for more \
             (disabled is less); change the guest's setting to move it with less"
        );
    }

    #[test]
    fn spec_round_trips_with_its_key_and_debug_hides_it() {
        let key = MigrationKey::from_bytes([0x3c; 32]);
        let s = spec(Transport::Aes256Gcm, Some(key.clone()));
        s.check().unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(&"3c".repeat(32)));
        let back: MigrationSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back.key, Some(key));
        assert_eq!(back.id, s.id);
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("3c3c") && dbg.contains("redacted"), "{dbg}");
    }

    #[test]
    fn bad_keys_are_rejected_without_echo() {
        let s = spec(
            Transport::Aes256Gcm,
            Some(MigrationKey::from_bytes([1; 32])),
        );
        let json = serde_json::to_string(&s)
            .unwrap()
            .replace(&"01".repeat(32), &"zz".repeat(32));
        let err = serde_json::from_str::<MigrationSpec>(&json)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not 64 hex digits") && !err.contains("zz"),
            "{err}"
        );
    }

    #[test]
    fn inconsistent_specs_fail_check() {
        assert!(matches!(
            spec(Transport::Aes256Gcm, None).check(),
            Err(SpecError::KeyMismatch { keyed: false, .. })
        ));
        assert!(matches!(
            spec(
                Transport::Plaintext,
                Some(MigrationKey::from_bytes([1; 32]))
            )
            .check(),
            Err(SpecError::KeyMismatch { keyed: true, .. })
        ));
        let mut s = spec(Transport::Plaintext, None);
        s.streams = 0;
        let e = s.check().unwrap_err();
        assert!(matches!(e, SpecError::Streams { streams: 0, .. }), "{e}");
        assert!(e.to_string().ends_with(": 0 streams (1..=64)"), "{e}");
    }
}
