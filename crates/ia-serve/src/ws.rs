//! `GET /ws/generate`: token streaming over a WebSocket.
//!
//! The client sends one JSON request: `model`, then `prompt` (raw text) or `messages` (chat,
//! rendered with the checkpoint's template), and the sampling fields of the OpenAI routes.
//! The server answers one message per token, `{"type": "token", "id", "text", "elapsed_ms"}`,
//! then `{"type": "done", "finish_reason", "usage", "time_to_first_token_ms",
//! "decode_tokens_per_s"}`, or `{"type": "error", "error": {...}}`. A client message
//! `{"type": "cancel"}`, or closing the socket, stops the generation after the current token
//! and is answered `{"type": "cancelled"}`.

use crate::error::ApiError;
use crate::openai::{chat_prompt, prepare, start, ChatMessage, SamplingFields};
use crate::worker::GenerationEvent;
use crate::AppState;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
struct WsRequest {
    model: String,
    prompt: Option<String>,
    messages: Option<Vec<ChatMessage>>,
    #[serde(flatten)]
    sampling: SamplingFields,
}

/// Most tokens a WebSocket generation makes when the request does not say.
const DEFAULT_MAX_TOKENS: usize = 256;

pub async fn generate(State(state): State<Arc<AppState>>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| session(state, socket))
}

fn error_message(e: &ApiError) -> Message {
    let mut v = serde_json::json!(e.body());
    v["type"] = "error".into();
    Message::Text(v.to_string().into())
}

async fn session(state: Arc<AppState>, socket: WebSocket) {
    let (mut tx, mut rx) = socket.split();
    let request = loop {
        match rx.next().await {
            Some(Ok(Message::Text(t))) => break t,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return,
        }
    };
    let events = serde_json::from_str::<WsRequest>(&request)
        .map_err(|e| ApiError::Unprocessable(format!("the request: {e}")))
        .and_then(|req| {
            let model = state.model(&req.model)?;
            let (prompt, special) = match (req.prompt, req.messages) {
                (Some(p), None) => (p, true),
                (None, Some(m)) => (chat_prompt(model, m)?, false),
                _ => {
                    return Err(ApiError::BadRequest(
                        "give exactly one of prompt and messages".into(),
                    ))
                }
            };
            let p = prepare(model, &prompt, special, req.sampling, DEFAULT_MAX_TOKENS)?;
            start(&state, model, &p)
        });
    let mut events = match events {
        Ok(events) => events,
        Err(e) => {
            let _ = tx.send(error_message(&e)).await;
            let _ = tx.close().await;
            return;
        }
    };
    loop {
        tokio::select! {
            event = events.recv() => {
                let message = match event {
                    Some(GenerationEvent::Token { id, text, elapsed_ms }) => serde_json::json!({
                        "type": "token", "id": id, "text": text, "elapsed_ms": elapsed_ms,
                    }),
                    Some(GenerationEvent::Done(s)) => serde_json::json!({
                        "type": "done",
                        "finish_reason": s.finish_reason,
                        "usage": {
                            "prompt_tokens": s.prompt_tokens,
                            "completion_tokens": s.completion_tokens,
                            "total_tokens": s.prompt_tokens + s.completion_tokens,
                        },
                        "time_to_first_token_ms": s.time_to_first_token_ms,
                        "decode_tokens_per_s": s.decode_tokens_per_s,
                    }),
                    Some(GenerationEvent::Failed(e)) => {
                        let _ = tx.send(error_message(&e)).await;
                        break;
                    }
                    None => break,
                };
                let done = message["type"] == "done";
                if tx.send(Message::Text(message.to_string().into())).await.is_err() || done {
                    break;
                }
            }
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Text(t))) if t.contains("cancel") => {
                    // Dropping the receiver stops the worker after its current token.
                    drop(events);
                    let _ = tx
                        .send(Message::Text(r#"{"type":"cancelled"}"#.into()))
                        .await;
                    break;
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = tx.close().await;
}
