//! A QEMU guest: launched (or adopted) in its own directory, driven over
//! QMP, moved by QEMU's own migration over channels ferry carries.

use ferry_core::error::report;
use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use ferry_core::machine::{QemuAdopt, QemuMachine};
use ferry_engine::{
    channels::{ChannelGuest, ChannelProgress, ChannelStatus},
    guest::{GuestError, GuestInfo, RunState},
};
use ferry_protocol::Limits;
use serde_json::{Value, json};

use crate::{PROGRAM, QemuError, Qmp};

/// A QEMU process and what ferry knows of it.
pub struct QemuGuest {
    name: String,
    machine: QemuMachine,
    dir: PathBuf,
    qmp: Mutex<Qmp>,
    /// Present when this process started QEMU (to reap it).
    child: Mutex<Option<Child>>,
    pid: Option<u32>,
    state: Mutex<RunState>,
    /// Its serial console's log (in `dir`, or where an adopted QEMU writes).
    serial: PathBuf,
    /// Where this QEMU's serial log started when it came here: its verdict
    /// counts what the guest said since.
    serial_from: u64,
    /// Started to receive a migration: it announces itself on resume.
    twin: bool,
    /// Started by something other than ferry, with its own network.
    foreign: bool,
}

/// How a resumed twin announces the guest (QEMU's own defaults: five
/// rounds, 50 ms then 100 ms apart more each time).
const ANNOUNCE: (u64, u64, u64, u64) = (50, 550, 5, 100);

fn qmp_path(dir: &Path) -> PathBuf {
    dir.join("qmp.sock")
}

fn serial_path(dir: &Path) -> PathBuf {
    dir.join("serial.log")
}

fn pid_path(dir: &Path) -> PathBuf {
    dir.join("qemu.pid")
}

/// What a host needs to adopt the QEMU in a directory after a restart:
/// the guest's name and machine, written when it is launched.
fn record_path(dir: &Path) -> PathBuf {
    dir.join("guest.json")
}

/// Present once the guest migrated away from this host (written, and
/// synced, before its QEMU ends): a restarted host does not boot it again.
fn released_path(dir: &Path) -> PathBuf {
    dir.join("released")
}

fn guest_err(e: QemuError) -> GuestError {
    GuestError::Invalid(report(&e).to_string())
}

impl QemuGuest {
    /// The arguments that start `machine` with its QMP socket and serial log
    /// in `dir`; `incoming` adds `-S -incoming defer`.
    pub fn command(
        name: &str,
        machine: &QemuMachine,
        dir: &Path,
        incoming: bool,
        tap: Option<&str>,
    ) -> Command {
        let mut c = Command::new(PROGRAM);
        c.args(["-name", &format!("guest={name}")])
            .args(["-nodefaults", "-display", "none"])
            .args([
                "-machine",
                &format!("{},accel={}", machine.machine, machine.accel.name()),
            ])
            .args(["-m", &format!("{}M", machine.memory >> 20)])
            .args(["-smp", &machine.vcpus.to_string()]);
        if let Some(k) = &machine.kernel {
            c.arg("-kernel").arg(k);
        }
        if let Some(i) = &machine.initrd {
            c.arg("-initrd").arg(i);
        }
        if let Some(a) = &machine.append {
            c.args(["-append", a]);
        }
        if let Some(d) = &machine.disk {
            c.arg("-drive")
                .arg(format!("file={},if=virtio,cache=none", d.display()));
        }
        if let (Some(nic), Some(tap)) = (&machine.nic, tap) {
            c.args([
                "-netdev",
                &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
                "-device",
                // No option ROM: the firmware does not PXE-boot.
                &format!("virtio-net-pci,netdev=n0,mac={},romfile=", nic.mac),
            ]);
        }
        c.args([
            "-chardev",
            &format!(
                "file,id=serial0,path={},append=on",
                serial_path(dir).display()
            ),
            "-serial",
            "chardev:serial0",
        ])
        .args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", qmp_path(dir).display()),
        ])
        .arg("-pidfile")
        .arg(pid_path(dir))
        .args(&machine.extra_args);
        if incoming {
            c.args(["-S", "-incoming", "defer"]);
        }
        c
    }

    /// Adopts the QEMU already running in `dir` (a restarted host, or a
    /// guest that came back here), else the one `running` names, else
    /// starts one.
    pub fn launch_or_adopt(
        name: &str,
        machine: &QemuMachine,
        dir: &Path,
        tap: Option<&str>,
        running: Option<&QemuAdopt>,
    ) -> Result<Self, QemuError> {
        if let Ok(q) = Qmp::connect(&qmp_path(dir)) {
            let mut g = Self::from_qmp(name, machine, dir, q, None)?;
            g.serial_from = std::fs::metadata(serial_path(dir)).map_or(0, |m| m.len());
            tracing::info!(guest = name, dir = %dir.display(), pid = ?g.pid, "adopted a running QEMU");
            return Ok(g);
        }
        match running {
            Some(r) => Self::adopt_running(name, machine, dir, r),
            None => Self::launch(name, machine, dir, false, tap),
        }
    }

    /// Adopts a QEMU that ferry did not start, by its QMP socket: ferry
    /// drives it from then on, migrates it, and quits it once it runs
    /// elsewhere. `machine` is how its twin starts on a destination, so
    /// the running QEMU must have its memory, vCPUs and accelerator (its
    /// devices are compared with the twin's when it migrates). `dir` keeps
    /// ferry's record of it (the release).
    pub fn adopt_running(
        name: &str,
        machine: &QemuMachine,
        dir: &Path,
        running: &QemuAdopt,
    ) -> Result<Self, QemuError> {
        make_dir(dir)?;
        let mut q = Qmp::connect(&running.qmp)?;
        let unlike = |what: String| QemuError::Unlike {
            qmp: running.qmp.clone(),
            what,
        };
        let memory = num(&q.execute("query-memory-size-summary", json!({}))?["base-memory"]);
        if memory != machine.memory {
            return Err(unlike(format!(
                "has {} MiB of memory, the guest's memory says {} MiB",
                memory >> 20,
                machine.memory >> 20
            )));
        }
        let vcpus = q
            .execute("query-cpus-fast", json!({}))?
            .as_array()
            .map_or(0, Vec::len);
        if vcpus != machine.vcpus as usize {
            return Err(unlike(format!(
                "has {vcpus} vCPUs, the guest's vcpus says {}",
                machine.vcpus
            )));
        }
        let kvm = q.execute("query-kvm", json!({}))?["enabled"] == json!(true);
        let accel = if kvm { "kvm" } else { "tcg" };
        if accel != machine.accel.name() {
            return Err(unlike(format!(
                "runs under {accel}, the guest's qemu.accel says {}",
                machine.accel.name()
            )));
        }
        if let Some(nic) = &machine.nic {
            // The MAC is what the network follows after the move (the
            // announcement, the router's watch): a different one would
            // announce an address nobody expects.
            let want = nic.mac.to_string();
            let macs: Vec<String> = q
                .execute("query-rx-filter", json!({}))?
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f["main-mac"].as_str().map(str::to_ascii_lowercase))
                .collect();
            if !macs.contains(&want.to_ascii_lowercase()) {
                return Err(unlike(format!(
                    "has no NIC with MAC {want}, the guest's nic.mac (its NICs: {})",
                    if macs.is_empty() {
                        "none".to_string()
                    } else {
                        macs.join(", ")
                    }
                )));
            }
        }
        let status = q.execute("query-status", json!({}))?["status"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if !["running", "paused", "prelaunch"].contains(&status.as_str()) {
            // Waiting for a migration, or left behind by one: not a guest
            // this host runs.
            return Err(unlike(format!("is {status}, not running")));
        }
        let pid = q.peer_pid();
        let mut g = Self::from_qmp(name, machine, dir, q, None)?;
        g.pid = pid;
        g.foreign = true;
        if let Some(log) = &running.serial_log {
            g.serial = log.clone();
        }
        g.serial_from = std::fs::metadata(&g.serial).map_or(0, |m| m.len());
        tracing::info!(guest = name, qmp = %running.qmp.display(), ?pid, machine = %g.machine.machine,
            devices = g.machine.devices.len(), "adopted a QEMU started elsewhere");
        Ok(g)
    }

    /// Whether the guest of `dir` moved away from this host (and has not
    /// come back).
    pub fn released_here(dir: &Path) -> bool {
        released_path(dir).exists()
    }

    /// Adopts the QEMU running in `dir`, by the record its launch left
    /// there; None when nothing answers (a stale directory).
    pub fn adopt(dir: &Path) -> Option<Self> {
        let record: Value = serde_json::from_slice(&std::fs::read(record_path(dir)).ok()?).ok()?;
        let name = record["name"].as_str()?.to_string();
        let machine: QemuMachine = serde_json::from_value(record["machine"].clone()).ok()?;
        let q = Qmp::connect(&qmp_path(dir)).ok()?;
        let mut g = Self::from_qmp(&name, &machine, dir, q, None).ok()?;
        g.serial_from = std::fs::metadata(serial_path(dir)).map_or(0, |m| m.len());
        Some(g)
    }

    /// Starts QEMU for `machine` in `dir` (created 0700). `incoming`: a twin
    /// that waits, paused, for a migration. `tap`: the interface its NIC
    /// gets (QEMU creates it, down and unattached).
    pub fn launch(
        name: &str,
        machine: &QemuMachine,
        dir: &Path,
        incoming: bool,
        tap: Option<&str>,
    ) -> Result<Self, QemuError> {
        let dir_err = |source| QemuError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        make_dir(dir)?;
        let _ = std::fs::remove_file(qmp_path(dir));
        let _ = std::fs::remove_file(pid_path(dir));
        let _ = std::fs::remove_file(released_path(dir));
        let record = serde_json::to_vec_pretty(&json!({"name": name, "machine": machine}))
            .expect("a machine serialises");
        std::fs::write(record_path(dir), record).map_err(dir_err)?;
        let serial_from = std::fs::metadata(serial_path(dir)).map_or(0, |m| m.len());
        let mut cmd = Self::command(name, machine, dir, incoming, tap);
        // Its own process group: a Ctrl-C or a signal to the host's group
        // does not reach the guest.
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| QemuError::Spawn {
            program: PROGRAM.into(),
            source,
        })?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let qmp = loop {
            if let Some(status) = child.try_wait().ok().flatten() {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
                }
                return Err(QemuError::Exited {
                    status: status.to_string(),
                    stderr: stderr.trim().to_string(),
                });
            }
            if let Ok(q) = Qmp::connect(&qmp_path(dir)) {
                break q;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(QemuError::Timeout(format!(
                    "QMP socket {} did not answer in 20 s",
                    qmp_path(dir).display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Its stderr is not read from here on: QEMU's rare messages must
        // not fill a pipe nobody drains.
        drop(child.stderr.take());
        let mut g = Self::from_qmp(name, machine, dir, qmp, Some(child))?;
        g.serial_from = serial_from;
        if incoming && !machine.devices.is_empty() && g.machine.devices != machine.devices {
            let differences = differences(&machine.devices, &g.machine.devices);
            g.end();
            return Err(QemuError::DeviceModel { differences });
        }
        if incoming {
            *g.state.lock().expect("state") = RunState::Incoming;
            // It announces the guest once ferry commits (GO), not as soon
            // as it has loaded: until then the guest runs on the source.
            g.twin = true;
            g.execute("migrate-set-parameters", json!({"announce-rounds": 0}))?;
        }
        tracing::info!(guest = name, pid = ?g.pid, incoming, "QEMU started");
        Ok(g)
    }

    fn from_qmp(
        name: &str,
        machine: &QemuMachine,
        dir: &Path,
        mut qmp: Qmp,
        child: Option<Child>,
    ) -> Result<Self, QemuError> {
        let status = qmp.execute("query-status", json!({}))?;
        let state = match status["status"].as_str().unwrap_or("") {
            "running" => RunState::Running,
            "inmigrate" => RunState::Incoming,
            _ => RunState::Paused,
        };
        let pid = child.as_ref().map(|c| c.id()).or_else(|| {
            std::fs::read_to_string(pid_path(dir))
                .ok()
                .and_then(|s| s.trim().parse().ok())
        });
        // What it runs, as a twin must run it: `pc` resolved to this
        // QEMU's versioned type, and its devices.
        let (concrete, devices) = device_model(&mut qmp)?;
        let mut machine = machine.clone();
        machine.machine = concrete;
        machine.devices = devices;
        Ok(Self {
            name: name.to_string(),
            machine,
            dir: dir.to_path_buf(),
            qmp: Mutex::new(qmp),
            child: Mutex::new(child),
            pid,
            state: Mutex::new(state),
            serial: serial_path(dir),
            serial_from: 0,
            twin: false,
            foreign: false,
        })
    }

    /// Whether its NIC is on ferry's tap (QEMU started by ferry, from
    /// [`Self::command`]), which the host attaches to its guest bridge.
    pub fn owns_tap(&self) -> bool {
        !self.foreign
    }

    /// The QEMU process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// When QEMU last reported `event` (STOP, RESUME, ...) on this session.
    pub fn last_event(&self, event: &str) -> Option<SystemTime> {
        self.qmp.lock().expect("qmp").last_event(event)
    }

    pub fn execute(&self, command: &str, arguments: Value) -> Result<Value, QemuError> {
        self.qmp.lock().expect("qmp").execute(command, arguments)
    }

    fn status(&self) -> Result<String, QemuError> {
        Ok(self.execute("query-status", json!({}))?["status"]
            .as_str()
            .unwrap_or("")
            .to_string())
    }

    /// Capabilities both ends of a migration set alike.
    fn set_channels(&self, channels: u16) -> Result<(), QemuError> {
        let multifd = channels > 1;
        self.execute(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "multifd", "state": multifd}]}),
        )?;
        if multifd {
            self.execute(
                "migrate-set-parameters",
                json!({"multifd-channels": channels - 1}),
            )?;
        }
        Ok(())
    }

    fn channel(socket: &Path) -> Value {
        json!([{"channel-type": "main",
                "addr": {"transport": "socket", "type": "unix", "path": socket}}])
    }

    /// Waits (bounded) until QEMU's migration is no longer in flight.
    fn settle(&self) {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            match self.execute("query-migrate", json!({})) {
                Ok(v) => match v["status"].as_str().unwrap_or("") {
                    "setup" | "active" | "device" | "cancelling" | "pre-switchover"
                    | "wait-unplug" => {}
                    _ => return,
                },
                Err(_) => return,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ends the process: `quit`, then a kill if it lingers.
    fn end(&self) {
        let _ = self.execute("quit", json!({}));
        let until = Instant::now() + Duration::from_secs(5);
        if let Some(mut c) = self.child.lock().expect("child").take() {
            while Instant::now() < until {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        } else if let Some(pid) = self.pid {
            // Adopted: not our child; gone once it has exited, reaped by
            // its parent or not.
            while Instant::now() < until {
                if exited(pid) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // SAFETY: this guest's QEMU, by the pid it wrote in its own directory
            // or the one the kernel gave for its QMP socket; it has not exited.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Whether process `pid` has exited: gone, or a zombie its parent has not
/// reaped yet (which still answers signals).
pub fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            state.starts_with('Z') || state.starts_with('X')
        }
        Err(_) => true,
    }
}

fn make_dir(dir: &Path) -> Result<(), QemuError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| QemuError::Dir {
            path: dir.to_path_buf(),
            source,
        })
}

/// A running QEMU's machine type (`pc` resolved to the versioned type it
/// stands for, which a twin must start: another QEMU version may resolve
/// `pc` differently) and its PCI devices, each as "SLOT VENDOR:DEVICE
/// CLASS" with the slot a path through bridges (bus numbers are the
/// firmware's, and a paused twin has run none).
pub fn device_model(qmp: &mut Qmp) -> Result<(String, Vec<String>), QemuError> {
    let ty = qmp.execute("qom-get", json!({"path": "/machine", "property": "type"}))?;
    let ty = ty.as_str().unwrap_or_default();
    let ty = ty.strip_suffix("-machine").unwrap_or(ty).to_string();
    let mut devices = Vec::new();
    for bus in qmp
        .execute("query-pci", json!({}))?
        .as_array()
        .into_iter()
        .flatten()
    {
        pci_devices(
            &bus["devices"],
            &format!("{:02x}:", num(&bus["bus"])),
            &mut devices,
        );
    }
    Ok((ty, devices))
}

fn pci_devices(list: &Value, prefix: &str, out: &mut Vec<String>) {
    for d in list.as_array().into_iter().flatten() {
        let slot = format!("{prefix}{:02x}.{}", num(&d["slot"]), num(&d["function"]));
        out.push(format!(
            "{slot} {:04x}:{:04x} {}",
            num(&d["id"]["vendor"]),
            num(&d["id"]["device"]),
            d["class_info"]["desc"].as_str().map_or_else(
                || format!("class {:04x}", num(&d["class_info"]["class"])),
                str::to_string
            )
        ));
        pci_devices(&d["pci_bridge"]["devices"], &format!("{slot}/"), out);
    }
}

/// What one device list has that the other lacks, for a person to read.
fn differences(source: &[String], twin: &[String]) -> String {
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|d| !b.contains(d)).cloned().collect()
    };
    let mut said = Vec::new();
    for (side, list) in [
        ("only the source has", only(source, twin)),
        ("only the twin has", only(twin, source)),
    ] {
        if !list.is_empty() {
            said.push(format!("{side} {}", list.join(", ")));
        }
    }
    if said.is_empty() {
        said.push("the same devices in another order".into());
    }
    said.join("; ")
}

/// (checks passed, checks failed) in a test guest's serial log from byte
/// `from` on: lines "ferry-guest: check N ok" / "... FAILED".
pub fn verdict_of(log: &Path, from: u64) -> Option<(u64, u64)> {
    let text = std::fs::read(log).ok()?;
    let text = String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default());
    let mut seen = false;
    let (mut ok, mut failed) = (0, 0);
    for l in text.lines() {
        let Some(rest) = l.trim().strip_prefix("ferry-guest: ") else {
            continue;
        };
        seen = true;
        if rest.starts_with("check ") {
            if rest.ends_with(" ok") {
                ok += 1;
            } else {
                failed += 1;
            }
        }
    }
    seen.then_some((ok, failed))
}

fn num(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_f64().map(|f| f as u64))
        .unwrap_or(0)
}

/// QEMU's parameters for a cap (None: none; QEMU's own 128 MiB/s default
/// would cap every link) and a downtime limit, in its units.
fn limit_params(bandwidth: Option<u64>, downtime_limit: std::time::Duration) -> serde_json::Value {
    json!({
        "max-bandwidth": bandwidth.unwrap_or(1 << 40),
        "downtime-limit": downtime_limit.as_millis().clamp(1, 2_000_000) as u64,
    })
}

impl ChannelGuest for QemuGuest {
    fn name(&self) -> &str {
        &self.name
    }

    fn memory_bytes(&self) -> u64 {
        self.machine.memory
    }

    fn run_state(&self) -> RunState {
        *self.state.lock().expect("state")
    }

    fn info(&self) -> GuestInfo {
        let (ops, get_errors) = self.verdict().unwrap_or((0, 0));
        GuestInfo {
            name: self.name.clone(),
            kind: "qemu".into(),
            memory: self.machine.memory,
            vcpus: self.machine.vcpus as usize,
            state: self.run_state(),
            throttle: 0,
            ops,
            get_errors,
            workload: None,
            nic: None,
            machine: Some(self.machine.clone()),
        }
    }

    fn start_migration(
        &self,
        socket: &Path,
        channels: u16,
        limits: &Limits,
    ) -> Result<(), GuestError> {
        self.set_channels(channels).map_err(guest_err)?;
        let throttle = limits.throttle_max > 0;
        self.execute(
            "migrate-set-capabilities",
            json!({"capabilities": [
                {"capability": "auto-converge", "state": throttle},
                {"capability": "events", "state": true}]}),
        )
        .map_err(guest_err)?;
        let mut params = limit_params(limits.bandwidth, limits.downtime_limit);
        if throttle {
            params["cpu-throttle-initial"] = json!(limits.throttle_initial.clamp(1, 99));
            params["cpu-throttle-increment"] = json!(limits.throttle_step.clamp(1, 99));
            params["max-cpu-throttle"] = json!(limits.throttle_max.clamp(1, 99));
        }
        self.execute("migrate-set-parameters", params)
            .map_err(guest_err)?;
        self.execute("migrate", json!({"channels": Self::channel(socket)}))
            .map_err(guest_err)?;
        Ok(())
    }

    fn accept_migration(&self, socket: &Path, channels: u16) -> Result<(), GuestError> {
        self.set_channels(channels).map_err(guest_err)?;
        self.execute(
            "migrate-incoming",
            json!({"channels": Self::channel(socket)}),
        )
        .map_err(guest_err)?;
        Ok(())
    }

    fn progress(&self) -> Result<ChannelProgress, GuestError> {
        let v = self
            .execute("query-migrate", json!({}))
            .map_err(guest_err)?;
        let status = match v["status"].as_str().unwrap_or("") {
            "" | "none" | "setup" => ChannelStatus::Setup,
            "completed" => ChannelStatus::Completed,
            "failed" => ChannelStatus::Failed(
                v["error-desc"]
                    .as_str()
                    .unwrap_or("no reason given")
                    .to_string(),
            ),
            "cancelled" => ChannelStatus::Cancelled,
            _ => ChannelStatus::Active,
        };
        let ram = &v["ram"];
        let page = num(&ram["page-size"]).max(4096);
        Ok(ChannelProgress {
            status: Some(status),
            transferred_bytes: num(&ram["transferred"]),
            remaining_bytes: num(&ram["remaining"]),
            total_bytes: num(&ram["total"]),
            duplicate_pages: num(&ram["duplicate"]),
            normal_pages: num(&ram["normal"]),
            dirty_rate: num(&ram["dirty-pages-rate"]) as f64 * page as f64,
            transfer_rate: ram["mbps"].as_f64().unwrap_or(0.0) * 1e6 / 8.0,
            passes: num(&ram["dirty-sync-count"]) as u32,
            throttle_percent: num(&v["cpu-throttle-percentage"]).min(100) as u8,
            expected_downtime_seconds: num(&v["expected-downtime"]) as f64 / 1e3,
            setup_seconds: num(&v["setup-time"]) as f64 / 1e3,
        })
    }

    fn set_switchover_bandwidth(&self, bytes_per_second: u64) -> Result<(), GuestError> {
        // QEMU would otherwise estimate the switch-over from its own rate
        // into ferry's local socket.
        self.execute(
            "migrate-set-parameters",
            json!({"avail-switchover-bandwidth": bytes_per_second.max(1)}),
        )
        .map_err(guest_err)?;
        Ok(())
    }

    fn set_limits(
        &self,
        bandwidth: Option<u64>,
        downtime_limit: std::time::Duration,
    ) -> Result<(), GuestError> {
        self.execute(
            "migrate-set-parameters",
            limit_params(bandwidth, downtime_limit),
        )
        .map_err(guest_err)?;
        Ok(())
    }

    fn cancel_migration(&self) {
        let _ = self.execute("migrate_cancel", json!({}));
        self.settle();
    }

    fn stopped_at(&self) -> Option<SystemTime> {
        self.qmp.lock().expect("qmp").last_event("STOP")
    }

    fn resume(&self) -> Result<(), GuestError> {
        let status = self.status().map_err(guest_err)?;
        if status != "running" {
            self.execute("cont", json!({})).map_err(guest_err)?;
        }
        let was = std::mem::replace(&mut *self.state.lock().expect("state"), RunState::Running);
        if self.twin && was != RunState::Running {
            // The guest is here now: the network learns it (RARP per NIC).
            let (initial, max, rounds, step) = ANNOUNCE;
            if let Err(e) = self.execute(
                "announce-self",
                json!({"initial": initial, "max": max, "rounds": rounds, "step": step}),
            ) {
                tracing::warn!(guest = %self.name, error = %report(&e), "announcing the guest failed");
            }
        }
        Ok(())
    }

    fn release(&self) {
        *self.state.lock().expect("state") = RunState::Released;
        // Durable before the process ends: a host restarted from here on
        // must not boot a guest that now runs elsewhere.
        match std::fs::File::create(released_path(&self.dir)).and_then(|f| f.sync_all()) {
            Ok(()) => {
                if let Ok(d) = std::fs::File::open(&self.dir) {
                    let _ = d.sync_all();
                }
            }
            Err(e) => {
                tracing::error!(guest = %self.name, dir = %self.dir.display(), error = %report(&e), "cannot record the release")
            }
        }
        self.end();
        tracing::info!(guest = %self.name, pid = ?self.pid, "QEMU ended");
    }

    fn verdict(&self) -> Option<(u64, u64)> {
        verdict_of(&self.serial, self.serial_from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> QemuMachine {
        QemuMachine {
            memory: 256 << 20,
            vcpus: 2,
            accel: Default::default(),
            machine: "pc".into(),
            kernel: Some("/k".into()),
            initrd: Some("/i".into()),
            append: Some("console=ttyS0".into()),
            disk: None,
            extra_args: vec!["-no-reboot".into()],
            nic: Some(ferry_core::machine::QemuNic {
                mac: "52:54:00:00:00:01".parse().unwrap(),
            }),
            devices: Vec::new(),
        }
    }

    fn args(c: &Command) -> Vec<String> {
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_twin_is_the_same_machine_paused_for_an_incoming_migration() {
        let dir = Path::new("/run/g");
        let src = args(&QemuGuest::command(
            "vm",
            &machine(),
            dir,
            false,
            Some("fq1"),
        ));
        let twin = args(&QemuGuest::command(
            "vm",
            &machine(),
            dir,
            true,
            Some("fq2"),
        ));
        // The same device model; only the tap's name and the wait differ.
        let same = |v: &[String]| -> Vec<String> {
            v.iter()
                .filter(|a| !a.contains("fq1") && !a.contains("fq2"))
                .filter(|a| !["-S", "-incoming", "defer"].contains(&a.as_str()))
                .cloned()
                .collect()
        };
        assert_eq!(same(&src), same(&twin));
        assert!(!src.iter().any(|a| a == "-incoming"));
        assert!(twin.ends_with(&["-S".into(), "-incoming".into(), "defer".into()]));
        for want in ["256M", "pc,accel=tcg", "-no-reboot"] {
            assert!(src.iter().any(|a| a == want), "{want} in {src:?}");
        }
        assert!(
            src.iter()
                .any(|a| a == "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,romfile="),
            "{src:?}"
        );
        assert!(src.iter().any(|a| a.starts_with("tap,id=n0,ifname=fq1,")));
        // Without a tap there is no NIC (a guest that needs none).
        let bare = args(&QemuGuest::command("vm", &machine(), dir, false, None));
        assert!(!bare.iter().any(|a| a.contains("netdev")));
    }

    #[test]
    fn the_verdict_counts_checks_from_where_the_guest_arrived() {
        let p = std::env::temp_dir().join(format!("ferry-verdict-{}", std::process::id()));
        std::fs::write(
            &p,
            "boot noise\nferry-guest: ready check_mib=16\nferry-guest: check 1 ok\n\
             ferry-guest: check 2 ok\n",
        )
        .unwrap();
        assert_eq!(verdict_of(&p, 0), Some((2, 0)));
        let arrived = std::fs::metadata(&p).unwrap().len();
        let mut more = std::fs::read_to_string(&p).unwrap();
        more.push_str("ferry-guest: check 3 ok\nferry-guest: check 4 FAILED 0123\n");
        std::fs::write(&p, more).unwrap();
        assert_eq!(verdict_of(&p, arrived), Some((1, 1)));
        // A log the guest never wrote to says nothing either way.
        std::fs::write(&p, "SeaBIOS\n").unwrap();
        assert_eq!(verdict_of(&p, 0), None);
        let _ = std::fs::remove_file(&p);
    }
}
