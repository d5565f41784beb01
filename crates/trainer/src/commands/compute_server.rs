//! `compute-server`: this build's device, hosted for trainers elsewhere (`train --device
//! ws://HOST:PORT`, or `iroh://ID@HOST:PORT`) by Burn's remote server over WebSocket or Iroh,
//! until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[cfg(feature = "remote")]
use anyhow::Context;
use burn::tensor::Device;

use crate::devices;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (port 0: any free port, printed) [default: loopback only].
    #[arg(long, default_value = "127.0.0.1:4100")]
    addr: SocketAddr,
    /// Serve over Burn's Iroh transport (authenticated and encrypted) instead of WebSocket, as
    /// the identity whose secret key is in FILE (made on first use, readable by its owner
    /// only). Iroh takes the UDP port of --addr on every interface, without relays; trainers
    /// dial the printed iroh://ID@HOST:PORT.
    #[arg(long, value_name = "FILE")]
    iroh_key: Option<PathBuf>,
}

#[cfg(feature = "remote")]
pub fn exec(args: Args, device: Device, token_file: Option<&Path>) -> anyhow::Result<()> {
    use burn::server::{RemoteServer, TokenAuthorizer};
    use std::io::Write;

    if let Some(reason) = vit_ops::remote::unservable(&device) {
        anyhow::bail!("cannot host {device:?}: {reason}");
    }
    // Only a file: a token on the command line would show in every process listing.
    let token = match token_file {
        Some(_) => devices::read_token(token_file)?,
        None => None,
    };
    let (transport, url) = match &args.iroh_key {
        None => websocket(args.addr)?,
        Some(key) => iroh(args.addr, key)?,
    };
    // The model's layer operations run here as single operations (the host kernels on flex and
    // ndarray), not as the dozens of Burn operations each would be composed of.
    let mut server = vit_ops::remote::with_layer_ops(RemoteServer::new([device.clone()]), &device);
    let guard = match &token {
        Some(token) => {
            server = server.with_authorizer(
                TokenAuthorizer::new(token.as_str()).context("the token is empty")?,
            );
            format!(
                "token from {}",
                token_file
                    .map(|path| path.display().to_string())
                    .unwrap_or_default()
            )
        }
        None => "no token: anyone who reaches this address may use the device".into(),
    };
    stop_on_signal(&url)?;
    // The line tests and scripts wait for: the address is bound and serving follows.
    println!("compute server: {device:?} on {url} ({guard}); Ctrl-C stops it");
    std::io::stdout().flush().ok();
    server
        .serve(transport)
        .map_err(|error| anyhow::anyhow!("the compute server on {url} stopped: {error}"))?;
    println!("compute server on {url}: stopped");
    Ok(())
}

/// A compute server for `device`, with the layer operations as `exec` serves them, on a
/// loopback port and a thread of this process for as long as the process runs, and the remote
/// device that reaches it: for tests and reproductions that need a server but no process of its
/// own. Burn's server is generic over its backend, and a test or example that started one
/// itself would compile all of it again (about two CPU-minutes each, at this profile's level);
/// this compiled instance is shared.
#[cfg(feature = "remote")]
pub fn in_this_process(device: &Device) -> anyhow::Result<Device> {
    use burn::remote::RemoteHost;
    use burn::server::RemoteServer;
    let (transport, url) = websocket(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let server = vit_ops::remote::with_layer_ops(RemoteServer::new([device.clone()]), device);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the server's runtime")?;
    let serving = url.clone();
    std::thread::spawn(move || {
        if let Err(error) = runtime.block_on(server.serve_async(transport)) {
            eprintln!("the compute server on {serving} stopped: {error}");
        }
    });
    Device::remote_options(&RemoteHost::websocket(&url))
        .init()
        .map_err(|error| anyhow::anyhow!("cannot open a session on {url}: {error}"))
}

/// A WebSocket transport listening on `addr`, and its `ws://` address.
#[cfg(feature = "remote")]
fn websocket(addr: SocketAddr) -> anyhow::Result<(burn::server::Transport, String)> {
    use burn::server::WebSocketTransport;
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener
        .local_addr()
        .context("the listener has no address")?;
    Ok((
        WebSocketTransport::from_listener(listener).into(),
        format!("ws://{bound}"),
    ))
}

/// An Iroh transport on `addr`'s UDP port, without relays, as the identity in `key` (made
/// there on first use), and its `iroh://ID@HOST:PORT` address.
#[cfg(feature = "remote")]
fn iroh(addr: SocketAddr, key: &Path) -> anyhow::Result<(burn::server::Transport, String)> {
    use burn::server::{IrohIdentity, IrohRelays, IrohTransport};
    if addr.port() == 0 {
        anyhow::bail!(
            "--iroh-key needs a port in --addr ({addr}): trainers dial it, and Iroh would \
             pick one it does not print"
        );
    }
    // Iroh binds the port itself, once serving: a port already taken is refused here, before
    // the server says it serves.
    drop(
        std::net::UdpSocket::bind(("0.0.0.0", addr.port()))
            .with_context(|| format!("cannot listen on UDP port {}", addr.port()))?,
    );
    let identity = IrohIdentity::load_or_create(key)
        .with_context(|| format!("cannot read or make the Iroh key {}", key.display()))?;
    let transport = IrohTransport::new(identity)
        .with_relays(IrohRelays::Disabled)
        .with_port(addr.port());
    let url = format!("iroh://{}@{addr}", transport.id());
    Ok((transport.into(), url))
}

/// Ctrl-C or SIGTERM ends the process with status 0 from the moment this returns. Burn's
/// server stops on them too, but only once it is serving: a signal that came sooner would kill
/// the process by the default action.
#[cfg(feature = "remote")]
fn stop_on_signal(url: &str) -> anyhow::Result<()> {
    let url = url.to_string();
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("cannot start the signal listener")?;
    let (mut interrupt, mut terminate) = runtime
        .block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })
        .context("cannot listen for Ctrl-C and SIGTERM")?;
    std::thread::spawn(move || {
        runtime.block_on(async {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        });
        println!("compute server on {url}: stopped");
        std::process::exit(0);
    });
    Ok(())
}

#[cfg(not(feature = "remote"))]
pub fn exec(args: Args, _device: Device, _token_file: Option<&Path>) -> anyhow::Result<()> {
    let _ = (args.addr, args.iroh_key, devices::REACH_TIMEOUT);
    anyhow::bail!(
        "this build has no compute-server support (the `remote` feature); \
         `cargo xtask compute-server` builds it"
    )
}
