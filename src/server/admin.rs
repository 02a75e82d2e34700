//! The admin HTTP API (see docs/admin-openapi.yaml): list rooms, close a room, remove a
//! peer, pause (mute) or resume a producer. With API keys it needs a bearer token with the
//! admin claim (`synapse-sfu token --admin`); in development mode it answers loopback only.

use std::time::Instant;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::http::HttpState;
use crate::wire::{ErrorCode, PeerId, ProducerId};

fn error(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    let body = json!({ "code": code.as_str(), "message": message.into() });
    (status, Json(body)).into_response()
}

/// Checks every admin request before its handler runs.
pub async fn authorize(
    State(state): State<HttpState>,
    ConnectInfo(super::http::TcpConnectInfo { addr: remote, .. }): ConnectInfo<
        super::http::TcpConnectInfo,
    >,
    request: Request,
    next: Next,
) -> Response {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // `[::]` takes IPv4 too, and 127.0.0.1 then arrives as ::ffff:127.0.0.1.
    match state
        .access
        .admit_admin(bearer, remote.ip().to_canonical().is_loopback())
    {
        Ok(()) => next.run(request).await,
        Err(e) => {
            let status = if e.code == ErrorCode::Forbidden {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::UNAUTHORIZED
            };
            tracing::warn!(%remote, error = %e, "admin request refused");
            error(status, e.code, e.message)
        }
    }
}

pub async fn list_rooms(State(state): State<HttpState>) -> Response {
    let rooms = state.rooms.rooms_snapshot();
    Json(json!({ "rooms": rooms })).into_response()
}

pub async fn close_room(State(state): State<HttpState>, Path(room): Path<String>) -> Response {
    let Some(handle) = state.rooms.room(&room) else {
        return error(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownRoom,
            format!("no room {room:?}"),
        );
    };
    let mut locked = handle.lock();
    let peers = locked.members();
    for peer in &peers {
        locked.kick(*peer, "the room was closed by an operator");
    }
    drop(locked);
    tracing::info!(%room, peers = peers.len(), "room closed by an operator");
    Json(json!({ "room": room, "removed": peers.len() })).into_response()
}

pub async fn remove_peer(State(state): State<HttpState>, Path(peer_id): Path<PeerId>) -> Response {
    if state.rooms.kick(peer_id, "removed by an operator") {
        tracing::info!(peer = peer_id.0, "peer removed by an operator");
        Json(json!({ "peer_id": peer_id, "removed": true })).into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownPeer,
            format!("no peer {peer_id}"),
        )
    }
}

async fn set_paused(state: HttpState, producer_id: ProducerId, paused: bool) -> Response {
    let found = state
        .rooms
        .set_producer_paused_by_admin(producer_id, paused, Instant::now());
    if found {
        Json(json!({ "producer_id": producer_id, "paused": paused })).into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownProducer,
            format!("no producer {producer_id}"),
        )
    }
}

pub async fn pause_producer(
    State(state): State<HttpState>,
    Path(id): Path<ProducerId>,
) -> Response {
    set_paused(state, id, true).await
}

pub async fn resume_producer(
    State(state): State<HttpState>,
    Path(id): Path<ProducerId>,
) -> Response {
    set_paused(state, id, false).await
}
