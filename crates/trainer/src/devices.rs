//! What `--device` names: a libtorch device of the tch backend, a wgpu adapter, or a Burn
//! compute server (`compute-server`) by its WebSocket or Iroh address; given several times,
//! the devices one run trains on side by side. A compute server is checked before Burn
//! connects to it (WebSocket) or given a deadline to answer (Iroh), so an address where
//! nothing listens is an error within seconds that names it.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use burn::tensor::Device;

use crate::backend::{self, TorchDevice, WgpuAdapter};

/// The variable that holds a compute server's token when `--token-file` does not name one.
pub const TOKEN_VARIABLE: &str = "VIT_REMOTE_TOKEN";

/// How long a compute server has to accept a TCP connection before it counts as unreachable.
pub const REACH_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an Iroh compute server has to open a session before it counts as unreachable:
/// over UDP there is no connection to try first, and Burn's own dial waits far longer.
pub const IROH_TIMEOUT: Duration = Duration::from_secs(5);

/// One `--device`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceArg {
    /// A libtorch device: `cpu`, `cuda`, `cuda:N`.
    Torch(TorchDevice),
    /// A wgpu adapter: `wgpu`, `wgpu:cpu`, `wgpu:N`, `wgpu:integrated:N`, ….
    Wgpu(WgpuAdapter),
    /// A compute server, `ws://HOST:PORT` or `iroh://ID@HOST:PORT`.
    Server(ServerAddress),
}

/// A compute server's address: `ws://HOST:PORT` (WebSocket), or `iroh://ID@HOST:PORT` (Burn's
/// Iroh transport, dialled directly without relays: the server proves it holds the key of
/// ID, and the traffic is encrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    /// `HOST:PORT`.
    pub host_port: String,
    /// The server's Iroh id (64 hex digits) for an `iroh://` address.
    pub iroh_id: Option<String>,
}

impl ServerAddress {
    pub fn url(&self) -> String {
        match &self.iroh_id {
            Some(id) => format!("iroh://{id}@{}", self.host_port),
            None => format!("ws://{}", self.host_port),
        }
    }
}

impl std::fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url())
    }
}

impl DeviceArg {
    /// What kind of device this is; one run's devices are all of one kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Torch(_) => "libtorch",
            Self::Wgpu(_) => "wgpu",
            Self::Server(ServerAddress { iroh_id: None, .. }) => "WebSocket compute-server",
            Self::Server(ServerAddress {
                iroh_id: Some(_), ..
            }) => "Iroh compute-server",
        }
    }
}

impl std::str::FromStr for DeviceArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.to_lowercase().starts_with("wgpu") {
            return text.parse().map(Self::Wgpu);
        }
        if let Some(rest) = text.strip_prefix("ws://") {
            let host_port = host_port(text, rest, "ws://HOST:PORT")?;
            return Ok(Self::Server(ServerAddress {
                host_port,
                iroh_id: None,
            }));
        }
        if let Some(rest) = text.strip_prefix("iroh://") {
            let form = "iroh://ID@HOST:PORT, as `compute-server --iroh-key` prints it";
            let (id, rest) = rest
                .split_once('@')
                .ok_or_else(|| format!("`{text}` is not a compute server's address: {form}"))?;
            if id.len() != 64 || !id.bytes().all(|byte| byte.is_ascii_hexdigit()) {
                return Err(format!(
                    "`{text}`: `{id}` is not an Iroh id (64 hex digits); the address is {form}"
                ));
            }
            return Ok(Self::Server(ServerAddress {
                host_port: host_port(text, rest, form)?,
                iroh_id: Some(id.to_lowercase()),
            }));
        }
        text.parse().map(Self::Torch).map_err(|_| {
            format!(
                "`{text}` is not a device: cpu, cuda, cuda:N, wgpu[:…], ws://HOST:PORT or \
                 iroh://ID@HOST:PORT"
            )
        })
    }
}

/// The `HOST:PORT` of the compute server's address `text`, `rest` being what follows its
/// scheme (and id); `form` is what the address should look like.
fn host_port(text: &str, rest: &str, form: &str) -> Result<String, String> {
    let host_port = rest.trim_end_matches('/');
    let valid = host_port
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !valid || host_port.contains('/') {
        return Err(format!(
            "`{text}` is not a compute server's address: {form}"
        ));
    }
    Ok(host_port.to_string())
}

impl std::fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Torch(device) => device.fmt(f),
            Self::Wgpu(adapter) => adapter.fmt(f),
            Self::Server(address) => address.fmt(f),
        }
    }
}

/// The devices a command runs on, started (local) or connected (compute servers), with the
/// names the user gave them, in the order given.
pub struct Devices {
    pub devices: Vec<Device>,
    pub names: Vec<String>,
    /// Each device's compute server, if it is one.
    servers: Vec<Option<ServerAddress>>,
    /// The compute servers' token, to ask an Iroh server whether it still answers.
    token: Option<String>,
}

impl Devices {
    /// The device that holds the model between steps: the first one named.
    pub fn main(&self) -> &Device {
        &self.devices[0]
    }

    /// The one device of a command that runs on one (every command but `train`).
    pub fn single(&self) -> anyhow::Result<&Device> {
        if self.devices.len() > 1 {
            bail!(
                "only `train` runs on several devices, and --device names {}: {}",
                self.devices.len(),
                self.names.join(", ")
            );
        }
        Ok(self.main())
    }

    /// The compute servers among the devices that no longer accept connections (WebSocket) or
    /// open a session (Iroh), each as `ADDRESS (device I of N)`.
    pub fn unreachable_servers(&self) -> Vec<String> {
        let count = self.devices.len();
        self.servers
            .iter()
            .enumerate()
            .filter_map(|(index, server)| {
                let address = server.as_ref()?;
                let answers = match address.iroh_id {
                    None => reach(address).is_ok(),
                    Some(_) => connect(address, self.token.as_deref()).is_ok(),
                };
                (!answers).then(|| format!("{address} (device {} of {count})", index + 1))
            })
            .collect()
    }
}

/// Starts or connects what `requested` names; nothing named is the build's own device.
/// `token_file` (else [`TOKEN_VARIABLE`]) holds the compute servers' token.
pub fn select(requested: &[DeviceArg], token_file: Option<&Path>) -> anyhow::Result<Devices> {
    for (index, device) in requested.iter().enumerate() {
        if requested[..index].contains(device) {
            bail!("--device {device} is given twice");
        }
    }
    if let Some(other) = requested
        .iter()
        .find(|device| device.kind() != requested[0].kind())
    {
        bail!(
            "--device mixes {} and {} devices ({}); one run trains on devices of one kind",
            requested[0].kind(),
            other.kind(),
            requested
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let on_servers = matches!(requested.first(), Some(DeviceArg::Server(_)));
    let token = if on_servers {
        read_token(token_file)?
    } else {
        None
    };
    let devices = if requested.is_empty() {
        vec![backend::select(None)?]
    } else {
        requested
            .iter()
            .map(|device| match device {
                DeviceArg::Torch(torch) => backend::select(Some(*torch)),
                DeviceArg::Wgpu(adapter) => backend::select_wgpu(*adapter),
                DeviceArg::Server(address) => connect(address, token.as_deref()),
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    if on_servers {
        yield_to_device_threads();
    }
    let names = if requested.is_empty() {
        vec![format!("{:?}", devices[0])]
    } else {
        requested.iter().map(ToString::to_string).collect()
    };
    let servers = requested
        .iter()
        .map(|device| match device {
            DeviceArg::Server(address) => Some(address.clone()),
            DeviceArg::Torch(_) | DeviceArg::Wgpu(_) => None,
        })
        .collect();
    Ok(Devices {
        devices,
        names,
        servers,
        token,
    })
}

/// Lowers this thread's priority, and with it that of the threads it starts later (the
/// training workers, the data loader); Burn's threads that carry operations to the servers,
/// started when [`connect`] ran an operation on each, keep theirs.
///
/// Burn 0.22.1's device channel makes the thread that issues operations spin when the queue
/// of 32 operations is full (cubecl-common's `device/handle/channel.rs`: 2^19 spins before it
/// yields), while the device-service thread that empties the queue into the socket waits for
/// a core. On a trainer with one core that spin took most of it; at the lowest priority the
/// issuing thread gives way to the device-service and socket threads, which keep theirs
/// (measured in docs/benchmarks.md). Linux keeps a nice value per thread, so only this thread
/// and those it starts get nice 19.
#[cfg(target_os = "linux")]
fn yield_to_device_threads() {
    // SAFETY: gettid and setpriority take no pointers; a failure leaves the priority as it was.
    unsafe {
        let thread = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, thread, 19);
    }
}

#[cfg(not(target_os = "linux"))]
fn yield_to_device_threads() {}

/// The compute servers' token: the first line of `token_file`, else [`TOKEN_VARIABLE`], else
/// none (a server with a token refuses a client without one).
pub fn read_token(token_file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let Some(path) = token_file else {
        return Ok(std::env::var(TOKEN_VARIABLE)
            .ok()
            .filter(|token| !token.is_empty()));
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(Some(token.to_string()))
}

/// Whether `address` accepts a TCP connection within [`REACH_TIMEOUT`].
pub fn reach(address: &ServerAddress) -> anyhow::Result<()> {
    use std::net::{TcpStream, ToSocketAddrs};
    let addresses: Vec<_> = address
        .host_port
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve the compute server {address}"))?
        .collect();
    let mut last = None;
    for socket in addresses {
        match TcpStream::connect_timeout(&socket, REACH_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(error) => last = Some(error),
        }
    }
    let reason = last.map_or("no address".to_string(), |error| error.to_string());
    bail!(
        "the compute server {address} cannot be reached ({reason}; waited up to {} s); is \
         `cargo xtask compute-server` running there, and is the address right?",
        REACH_TIMEOUT.as_secs()
    )
}

/// The device of the compute server at `address`, its session open and one operation run on
/// it (so Burn has started the threads that carry operations there).
#[cfg(feature = "remote")]
fn connect(address: &ServerAddress, token: Option<&str>) -> anyhow::Result<Device> {
    use burn::remote::ConnectError;
    let host = remote_host(address, token)?;
    let opened = match address.iroh_id {
        None => {
            reach(address)?;
            Device::remote_options(&host).init()
        }
        Some(_) => {
            within(IROH_TIMEOUT, move || Device::remote_options(&host).init()).ok_or_else(|| {
                anyhow::anyhow!(
                    "the compute server {address} cannot be reached (no session within {} s); \
                     is `cargo xtask compute-server --iroh-key …` running there, and are its id, \
                     host and port right?",
                    IROH_TIMEOUT.as_secs()
                )
            })?
        }
    };
    let device = opened.map_err(|error| match error {
        ConnectError::Unauthorized if token.is_none() => anyhow::anyhow!(
            "the compute server {address} wants a token, and none was given: put it in a \
             file and pass --token-file FILE, or set {TOKEN_VARIABLE}"
        ),
        ConnectError::Unauthorized => anyhow::anyhow!(
            "the compute server {address} refused the token (its log says why); check \
             --token-file or {TOKEN_VARIABLE}"
        ),
        other => anyhow::anyhow!("the compute server {address}: {other}"),
    })?;
    backend::start(&device)
        .map_err(|message| anyhow::anyhow!("the compute server {address}: {message}"))?;
    Ok(device)
}

/// How Burn reaches the compute server at `address`, with `token`: over WebSocket, or over
/// Iroh without relays, dialling every address its host resolves to.
#[cfg(feature = "remote")]
fn remote_host(
    address: &ServerAddress,
    token: Option<&str>,
) -> anyhow::Result<burn::remote::RemoteHost> {
    use burn::remote::{EndpointId, IrohHost, IrohRelays, RemoteHost};
    use std::net::ToSocketAddrs;
    let host = match &address.iroh_id {
        None => RemoteHost::websocket(&address.url()),
        Some(id) => {
            let id: EndpointId = id.parse().map_err(|error| {
                anyhow::anyhow!("{address}: `{id}` is not an Iroh id ({error})")
            })?;
            let sockets = address
                .host_port
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve the compute server {address}"))?;
            let iroh = sockets.fold(
                IrohHost::new(id).with_relays(IrohRelays::Disabled),
                IrohHost::with_address,
            );
            RemoteHost::iroh(iroh)
        }
    };
    Ok(match token {
        Some(token) => host.with_credential(token),
        None => host,
    })
}

/// What `work` returns, unless it takes longer than `timeout`: then `None`, and the thread
/// that runs it is left to finish or to end with the process.
#[cfg(feature = "remote")]
fn within<T: Send + 'static>(
    timeout: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(work()).ok());
    receiver.recv_timeout(timeout).ok()
}

#[cfg(not(feature = "remote"))]
fn connect(address: &ServerAddress, _token: Option<&str>) -> anyhow::Result<Device> {
    bail!(
        "--device {address} needs a build with compute-server support (the `remote` feature); \
         `cargo xtask train --device {address} …` builds it"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_as_libtorch_devices_or_compute_servers() {
        assert_eq!(
            "cuda:1".parse::<DeviceArg>(),
            Ok(DeviceArg::Torch(TorchDevice::Cuda(1)))
        );
        assert_eq!(
            "wgpu:0".parse::<DeviceArg>(),
            Ok(DeviceArg::Wgpu(WgpuAdapter::Discrete(0)))
        );
        assert_eq!(
            "wgpu:cpu".parse::<DeviceArg>().unwrap().to_string(),
            "wgpu:cpu"
        );
        let server = "ws://10.0.0.2:4000/".parse::<DeviceArg>().unwrap();
        assert_eq!(server.to_string(), "ws://10.0.0.2:4000");
        let id = "0123456789abcdef".repeat(4);
        let iroh = format!("iroh://{}@box:4100", id.to_uppercase())
            .parse::<DeviceArg>()
            .unwrap();
        assert_eq!(iroh.to_string(), format!("iroh://{id}@box:4100"));
        assert_ne!(iroh.kind(), server.kind());
        let short = format!("iroh://{}@box:4100", &id[1..]);
        let no_id = "iroh://box:4100".to_string();
        let no_port = format!("iroh://{id}@box");
        for bad in [
            "ws://",
            "ws://host",
            "ws://:4000",
            "ws://h:99999",
            "ws://h:1/x",
            "wgpu:gpu",
            "tpu",
            short.as_str(),
            no_id.as_str(),
            no_port.as_str(),
        ] {
            let error = bad.parse::<DeviceArg>().unwrap_err();
            assert!(error.contains(&format!("`{bad}`")), "{error}");
        }
    }

    #[test]
    fn a_device_given_twice_or_a_mix_of_kinds_is_refused_before_anything_starts() {
        let server: DeviceArg = "ws://127.0.0.1:9".parse().unwrap();
        let twice = select(&[server.clone(), server.clone()], None)
            .err()
            .unwrap();
        assert!(twice.to_string().contains("given twice"), "{twice}");
        let mixed = select(&[DeviceArg::Torch(TorchDevice::Cpu), server], None)
            .err()
            .unwrap();
        assert!(mixed.to_string().contains("mixes"), "{mixed}");
        let adapters = [
            DeviceArg::Wgpu(WgpuAdapter::Cpu),
            DeviceArg::Wgpu(WgpuAdapter::Default),
        ];
        let mixed = select(
            &[adapters[0].clone(), DeviceArg::Torch(TorchDevice::Cpu)],
            None,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            mixed.contains("mixes wgpu and libtorch devices (wgpu:cpu, cpu)"),
            "{mixed}"
        );
        let twice = select(
            &[adapters[1].clone(), "wgpu:default".parse().unwrap()],
            None,
        )
        .err()
        .unwrap();
        assert!(twice.to_string().contains("given twice"), "{twice}");
    }

    #[test]
    fn the_token_is_the_first_line_of_its_file_and_an_empty_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\nignored\n").unwrap();
        assert_eq!(read_token(Some(&file)).unwrap().as_deref(), Some("s3cret"));
        std::fs::write(&file, "\n").unwrap();
        let error = read_token(Some(&file)).unwrap_err().to_string();
        assert!(
            error.contains("is empty") && error.contains("token"),
            "{error}"
        );
        let missing = read_token(Some(&dir.path().join("absent"))).unwrap_err();
        assert!(format!("{missing:#}").contains("absent"), "{missing:#}");
    }

    #[test]
    fn a_server_where_nothing_listens_is_unreachable_within_the_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let address = ServerAddress {
            host_port: format!("127.0.0.1:{port}"),
            iroh_id: None,
        };
        let started = std::time::Instant::now();
        let error = reach(&address).unwrap_err().to_string();
        assert!(error.contains(&address.url()), "{error}");
        assert!(started.elapsed() <= REACH_TIMEOUT + Duration::from_secs(1));
    }
}
