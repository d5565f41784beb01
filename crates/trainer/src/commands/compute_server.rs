//! `compute-server`: this build's device, hosted for trainers elsewhere (`train --device
//! ws://HOST:PORT`) by Burn's remote server over WebSocket, until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::Path;

#[cfg(feature = "remote")]
use anyhow::Context;
use burn::tensor::Device;

use crate::devices;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (port 0: any free port, printed) [default: loopback only].
    #[arg(long, default_value = "127.0.0.1:4100")]
    addr: SocketAddr,
}

#[cfg(feature = "remote")]
pub fn exec(args: Args, device: Device, token_file: Option<&Path>) -> anyhow::Result<()> {
    use burn::server::{RemoteServer, TokenAuthorizer, WebSocketTransport};
    use std::io::Write;
    use std::net::TcpListener;

    // Only a file: a token on the command line would show in every process listing.
    let token = match token_file {
        Some(_) => devices::read_token(token_file)?,
        None => None,
    };
    let listener =
        TcpListener::bind(args.addr).with_context(|| format!("cannot listen on {}", args.addr))?;
    let bound = listener
        .local_addr()
        .context("the listener has no address")?;
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
    stop_on_signal(bound)?;
    // The line tests and scripts wait for: the address is bound and serving follows.
    println!("compute server: {device:?} on ws://{bound} ({guard}); Ctrl-C stops it");
    std::io::stdout().flush().ok();
    server
        .serve(WebSocketTransport::from_listener(listener))
        .map_err(|error| anyhow::anyhow!("the compute server on {bound} stopped: {error}"))?;
    println!("compute server on ws://{bound}: stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM ends the process with status 0 from the moment this returns. Burn's
/// server stops on them too, but only once it is serving: a signal that came sooner would kill
/// the process by the default action.
#[cfg(feature = "remote")]
fn stop_on_signal(bound: SocketAddr) -> anyhow::Result<()> {
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
        println!("compute server on ws://{bound}: stopped");
        std::process::exit(0);
    });
    Ok(())
}

#[cfg(not(feature = "remote"))]
pub fn exec(args: Args, _device: Device, _token_file: Option<&Path>) -> anyhow::Result<()> {
    let _ = (args.addr, devices::REACH_TIMEOUT);
    anyhow::bail!(
        "this build has no compute-server support (the `remote` feature); \
         `cargo xtask compute-server` builds it"
    )
}
