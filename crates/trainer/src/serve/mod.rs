//! `serve`: the model behind a small HTTP server (axum on tokio). `GET /` is a page to draw a
//! digit or upload a picture; `POST /api/predict` answers an image (PNG/JPEG, or JSON pixels)
//! with the digit, the ten probabilities, the attention rollout and the input the model saw;
//! `GET /api/model` describes the model; `GET /healthz` says it is up. Bad requests get a JSON
//! error with the matching status, and a panic in a handler is a 500, never a dead server.

mod inference;

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{get, post};
use burn::prelude::*;
use serde_json::{Value, json};
use tower_http::catch_panic::CatchPanicLayer;
use vit_model::{Vit, mnist_style};

pub use inference::Batching;
use inference::{Inference, Refusal};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY: usize = 1 << 20;
/// Largest body read and dropped before a 413; beyond it the connection is closed.
const DRAIN_LIMIT: usize = 16 << 20;
const PAGE: &str = include_str!("page.html");

#[derive(Clone)]
struct App {
    inference: Inference,
    model: Value,
    test_hooks: bool,
}

/// Serves `vit` (described by `model`) at `addr` until Ctrl-C or SIGTERM; requests in flight
/// finish first.
pub fn serve(
    vit: Vit,
    model: Value,
    addr: SocketAddr,
    batching: Batching,
    device: Device,
) -> anyhow::Result<()> {
    let app = App {
        inference: Inference::start(vit, device, batching),
        model,
        test_hooks: crate::test_hooks::serve_hooks(),
    };
    let router = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/model", get(describe))
        .route("/api/predict", post(predict))
        // Bodies are read under MAX_BODY by the handler, which answers 413 in JSON.
        .layer(DefaultBodyLimit::disable())
        .layer(CatchPanicLayer::custom(|_| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the server failed on this request",
            )
        }))
        .with_state(app);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the server's runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let bound = listener.local_addr()?;
        println!("serving http://{bound}/ (Ctrl-C stops)");
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown())
            .await
            .context("the server stopped on an error")
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    println!("stopping: answering the requests in flight");
}

async fn describe(State(app): State<App>) -> Json<Value> {
    Json(app.model)
}

async fn predict(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    if app.test_hooks && headers.contains_key("x-test-panic") {
        panic!(
            "{}: a handler panics on request",
            crate::test_hooks::SERVE_HOOKS_VAR
        );
    }
    let hold = app
        .test_hooks
        .then(|| headers.get("x-test-hold-ms")?.to_str().ok()?.parse().ok())
        .flatten()
        .map(std::time::Duration::from_millis);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_BODY) {
        // Read what the client is sending (within a bound) so that it gets the answer rather
        // than a connection reset in the middle of its upload.
        let _ = axum::body::to_bytes(body, DRAIN_LIMIT).await;
        return error(StatusCode::PAYLOAD_TOO_LARGE, "the body is over 1 MiB");
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the body is over 1 MiB (or broke off)",
        );
    };
    let pixels = match read_image(&headers, &body) {
        Ok(pixels) => pixels,
        Err(response) => return response,
    };
    match app.inference.predict(pixels, hold).await {
        Ok(answer) => Json(answer).into_response(),
        Err(Refusal::Busy) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests waiting; try again",
        ),
        Err(Refusal::Stopped) => error(StatusCode::INTERNAL_SERVER_ERROR, "the model stopped"),
    }
}

/// The 28×28 image of a request: an image file (`image/*`) made MNIST-like, or JSON
/// `{"pixels": [784 values 0–255]}`.
fn read_image(headers: &HeaderMap, body: &[u8]) -> Result<[u8; 784], Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("image/") {
        let image = image::load_from_memory(body).map_err(|decode| {
            error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the image: {decode}"),
            )
        })?;
        return mnist_style::from_image(&image).ok_or_else(|| {
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "no digit found: the image is blank",
            )
        });
    }
    if content_type.starts_with("application/json") {
        let json: Value = serde_json::from_slice(body)
            .map_err(|parse| error(StatusCode::BAD_REQUEST, &format!("not JSON: {parse}")))?;
        let values = json["pixels"].as_array().ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                "expected {\"pixels\": [784 values 0-255]}",
            )
        })?;
        let pixels: Vec<u8> = values
            .iter()
            .map(|value| value.as_u64().filter(|&v| v <= 255).map(|v| v as u8))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    "pixels must be whole numbers 0-255",
                )
            })?;
        let count = pixels.len();
        let pixels: [u8; 784] = pixels.try_into().map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                &format!("{count} pixels; a 28x28 image has 784"),
            )
        })?;
        if pixels.iter().all(|&p| p == 0) {
            return Err(error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "no digit found: the image is blank",
            ));
        }
        return Ok(pixels);
    }
    Err(error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        &format!("Content-Type {content_type:?}: send image/png, image/jpeg or application/json"),
    ))
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}
