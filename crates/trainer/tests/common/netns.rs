//! Hosts of a test's own on this machine: network namespaces joined by veth pairs, so that a
//! trainer and its compute servers talk across real network interfaces. Needs root and
//! iproute2's `ip`; everything made is removed on drop, and what a killed test run left behind
//! is removed by the next.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Every namespace these tests make starts with this, then the test process's id.
const PREFIX: &str = "vitm";
/// The port compute servers listen on, each at its own host's address.
pub const SERVER_PORT: u16 = 4100;

/// Whether this machine can make network namespaces (root and `ip`). Without them a test
/// returns early, saying so, unless `VIT_REQUIRE_NETNS` is set (CI sets it), where that fails.
pub fn available() -> bool {
    let root = is_root();
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|out| out.status.success());
    if root && ip {
        return true;
    }
    assert!(
        std::env::var_os("VIT_REQUIRE_NETNS").is_none(),
        "VIT_REQUIRE_NETNS is set, but network namespaces need root and iproute2's `ip`"
    );
    eprintln!("skipped: network namespaces need root and iproute2's `ip`");
    false
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find(|line| line.starts_with("Uid:"))
            .and_then(|line| line.split_whitespace().nth(1).map(|uid| uid == "0"))
            .unwrap_or(false)
    })
}

/// A trainer host and `servers` server hosts, each server joined to the trainer by a veth
/// pair on a /24 of its own: server `i` is 10.213.`i`.2, the trainer 10.213.`i`.1 there, and
/// the trainer's host forwards between the servers.
pub struct Hosts {
    trainer: String,
    servers: Vec<String>,
    /// The compute servers running, by server index.
    running: Vec<(usize, Child)>,
}

impl Hosts {
    pub fn new(servers: usize) -> Self {
        remove_leftovers();
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "{}x{}",
            std::process::id(),
            MADE.fetch_add(1, Ordering::Relaxed)
        );
        let trainer = format!("{PREFIX}{id}t");
        let mut hosts = Self {
            trainer: trainer.clone(),
            servers: Vec::new(),
            running: Vec::new(),
        };
        ip(&["netns", "add", &trainer]);
        ip(&["-n", &trainer, "link", "set", "lo", "up"]);
        for index in 0..servers {
            let server = format!("{PREFIX}{id}s{index}");
            ip(&["netns", "add", &server]);
            hosts.servers.push(server.clone());
            ip(&["-n", &server, "link", "set", "lo", "up"]);
            let (near, far) = (format!("vt{id}{index}"), format!("vs{id}{index}"));
            ip(&[
                "link", "add", &near, "netns", &trainer, "type", "veth", "peer", "name", &far,
                "netns", &server,
            ]);
            for (namespace, link, host) in [(&trainer, &near, 1), (&server, &far, 2)] {
                let address = format!("10.213.{index}.{host}/24");
                ip(&["-n", namespace, "addr", "add", &address, "dev", link]);
                ip(&["-n", namespace, "link", "set", link, "up"]);
            }
            // The servers reach each other through the trainer's host, as machines on one
            // switch would: Burn moves tensors between servers directly.
            ip(&[
                "-n",
                &server,
                "route",
                "add",
                "default",
                "via",
                &format!("10.213.{index}.1"),
            ]);
        }
        ip(&[
            "netns",
            "exec",
            &trainer,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ]);
        hosts
    }

    /// `ws://` address of server `index`.
    pub fn server_url(&self, index: usize) -> String {
        format!("ws://10.213.{index}.2:{SERVER_PORT}")
    }

    /// Bytes sent and received on the trainer's side of server `index`'s link so far.
    pub fn link_bytes(&self, index: usize) -> (u64, u64) {
        let link = format!(
            "vt{}{index}",
            &self.trainer[PREFIX.len()..self.trainer.len() - 1]
        );
        let read = |what: &str| {
            let output = Command::new("ip")
                .args(["netns", "exec", &self.trainer, "cat"])
                .arg(format!("/sys/class/net/{link}/statistics/{what}_bytes"))
                .output()
                .expect("read the link's counters");
            String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .unwrap_or(0)
        };
        (read("tx"), read("rx"))
    }

    /// `command` run on the trainer's host.
    pub fn on_trainer(&self, command: &Command) -> Command {
        in_namespace(&self.trainer, command)
    }

    /// Starts `vit-trainer compute-server` on server `index`, waits until it listens, and
    /// keeps it to be killed on drop. `token_file` is its token; `core`, the one CPU core it
    /// may run on (`taskset`).
    pub fn start_server(
        &mut self,
        index: usize,
        binary: &Path,
        token_file: Option<&Path>,
        core: Option<usize>,
    ) {
        self.start(index, binary, token_file, core, None);
    }

    /// Starts an Iroh compute server (`--iroh-key key`) on server `index` as [`start_server`]
    /// does, and returns the `iroh://ID@HOST:PORT` address it prints.
    pub fn start_iroh_server(
        &mut self,
        index: usize,
        binary: &Path,
        token_file: Option<&Path>,
        key: &Path,
    ) -> String {
        let line = self.start(index, binary, token_file, None, Some(key));
        line.split_whitespace()
            .find(|word| word.starts_with("iroh://"))
            .unwrap_or_else(|| panic!("server {index} printed no iroh:// address: {line:?}"))
            .to_string()
    }

    /// [`start_server`], with `--iroh-key` when `iroh_key` is given; the line the server
    /// printed once listening.
    fn start(
        &mut self,
        index: usize,
        binary: &Path,
        token_file: Option<&Path>,
        core: Option<usize>,
        iroh_key: Option<&Path>,
    ) -> String {
        let mut command = match core {
            Some(core) => {
                let mut taskset = Command::new("taskset");
                taskset.arg("-c").arg(core.to_string()).arg(binary);
                taskset
            }
            None => Command::new(binary),
        };
        command
            .env("BURN_DEVICE", "flex")
            .arg("compute-server")
            .arg("--addr")
            .arg(format!("10.213.{index}.2:{SERVER_PORT}"));
        if let Some(file) = token_file {
            command.arg("--token-file").arg(file);
        }
        if let Some(key) = iroh_key {
            command.arg("--iroh-key").arg(key);
        }
        let mut child = in_namespace(&self.servers[index], &command)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the compute server");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let started = Instant::now();
        let line = lines.next().and_then(Result::ok).unwrap_or_default();
        assert!(
            line.starts_with("compute server:"),
            "server {index} did not start within {:?}: {line:?}",
            started.elapsed()
        );
        // Keep reading its output so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        self.running.push((index, child));
        line
    }

    /// The process id of server `index`, which was started.
    pub fn server_pid(&self, index: usize) -> u32 {
        self.running
            .iter()
            .find(|(running, _)| *running == index)
            .map(|(_, child)| child.id())
            .expect("server was started")
    }

    /// Kills server `index` (SIGKILL: no goodbye on the connection) and waits for it.
    pub fn kill_server(&mut self, index: usize) {
        let position = self
            .running
            .iter()
            .position(|(running, _)| *running == index)
            .expect("server was started");
        let (_, mut child) = self.running.remove(position);
        child.kill().ok();
        child.wait().ok();
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for (_, child) in &mut self.running {
            child.kill().ok();
            child.wait().ok();
        }
        for namespace in self.servers.iter().chain([&self.trainer]) {
            remove_namespace(namespace);
        }
    }
}

fn in_namespace(namespace: &str, command: &Command) -> Command {
    let mut wrapped = Command::new("ip");
    wrapped
        .args(["netns", "exec", namespace])
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Kills what runs in `namespace` and deletes it (its veth ends go with it).
fn remove_namespace(namespace: &str) {
    if let Ok(output) = Command::new("ip")
        .args(["netns", "pids", namespace])
        .output()
    {
        for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            Command::new("kill").args(["-9", pid]).status().ok();
        }
    }
    // A namespace whose processes are still exiting is busy for a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Command::new("ip")
        .args(["netns", "del", namespace])
        .output()
        .is_ok_and(|output| !output.status.success())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Namespaces of test processes that no longer run (killed before their drop).
fn remove_leftovers() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove_namespace(name);
        }
    }
}
