//! Server-sent events, the framing of OpenAI's streams: one `data: <json>\n\n` per
//! event and a final `data: [DONE]\n\n` (strict clients fail without it).
//!
//! [`response`] turns a channel of events into a streaming HTTP body. Its sender lives in
//! a task that forwards the engine's tokens; when the client goes away the body is
//! dropped, the channel closes, and that task ([`Frames::closed`]) stops at once, which
//! drops the engine's channel in turn: the engine sees it before its next step.

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use tokio::sync::mpsc;

/// The sending side of a stream's body.
pub struct Frames(mpsc::Sender<Result<Bytes, Infallible>>);

impl Frames {
    /// Sends one `data:` event; false when the client is gone.
    pub async fn data(&self, json: &serde_json::Value) -> bool {
        self.0
            .send(Ok(Bytes::from(format!("data: {json}\n\n"))))
            .await
            .is_ok()
    }

    /// The end of the stream.
    pub async fn done(&self) -> bool {
        self.0
            .send(Ok(Bytes::from_static(b"data: [DONE]\n\n")))
            .await
            .is_ok()
    }

    /// Resolves when the client has gone away.
    pub async fn closed(&self) {
        self.0.closed().await
    }
}

/// A streaming `text/event-stream` response and the [`Frames`] that feed it.
pub fn response() -> (Response, Frames) {
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let response = (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response();
    (response, Frames(tx))
}
