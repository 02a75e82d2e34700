//! The WebSocket fallback (docs/PROTOCOL.md section 17) against the real relay: the
//! upgrade's checks, bad input (each offender gets a close it can read, the others carry
//! on), close codes, and a session's streams and datagrams over TCP. The mixed call of
//! WebSocket and WebTransport peers is in `relay.rs`.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use futures_util::{SinkExt, StreamExt};
use synapse_sfu::server::Server;
use synapse_sfu::transport::TransportKind;
use synapse_sfu::wire::mux::{self, MuxMessage};
use synapse_sfu::wire::{MediaKind, ServerMessage, encode_message};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type RawSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket to the relay's `/ws`, speaking nothing yet.
async fn raw_socket(server: &Server) -> RawSocket {
    let addr = server.http_addr().unwrap();
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", mux::SUBPROTOCOL.parse().unwrap());
    let (socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        mux::SUBPROTOCOL
    );
    socket
}

/// Reads until the relay closes the socket; returns the close code and reason.
async fn close_of(socket: &mut RawSocket) -> (u16, String) {
    let until = tokio::time::Instant::now() + patient(Duration::from_secs(5));
    loop {
        let next = tokio::time::timeout_at(until, socket.next())
            .await
            .expect("the relay closes the socket in time");
        match next {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                panic!("closed without a close frame")
            }
            Some(Ok(_)) => {}
        }
    }
}

fn control(message: &synapse_sfu::wire::ClientMessage) -> Message {
    Message::Binary(MuxMessage::Control(encode_message(message)).encode())
}

fn join_request(room: &str, name: &str) -> synapse_sfu::wire::ClientMessage {
    serde_json::from_value(serde_json::json!({
        "id": 1, "type": "join", "version": 1, "room": room, "name": name
    }))
    .unwrap()
}

/// A publisher over QUIC and a listener over WebSocket; returns a check that the listener
/// still hears the publisher's audio.
async fn live_pair(server: &Server) -> (Peer, Peer, synapse_sfu::wire::ProducerId) {
    let publisher = join(server, "room", "publisher", false).await;
    let mut ws = options(server);
    ws.transport = TransportKind::WebSocket;
    let listener = join_with(ws, "room", "listener", true).await;
    let mic = publisher
        .client
        .produce(MediaKind::Audio, "opus")
        .await
        .unwrap();
    wait_for_relay(server, Duration::from_secs(5), |c| c.consumers == 1).await;
    (publisher, listener, mic)
}

async fn still_hears(publisher: &Peer, listener: &mut Peer, mic: synapse_sfu::wire::ProducerId) {
    while listener.incoming.frames.try_recv().is_ok() {}
    for seq in 1000..1020 {
        send_audio(&publisher.client, mic, seq);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let heard = collect_until(&mut listener.incoming, Duration::from_secs(5), |r| {
        r.get(&mic).is_some_and(|f| f.len() >= 15)
    })
    .await;
    assert!(
        heard.get(&mic).is_some_and(|f| f.len() >= 15),
        "the listener over WebSocket still hears the publisher: {heard:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_without_the_subprotocol_is_refused_with_a_sentence() {
    let server = start_relay().await;
    let addr = server.http_addr().unwrap();
    let request = format!("ws://{addr}/ws").into_client_request().unwrap();
    let error = tokio_tungstenite::connect_async(request)
        .await
        .expect_err("refused");
    let tokio_tungstenite::tungstenite::Error::Http(response) = error else {
        panic!("not an HTTP refusal: {error}");
    };
    assert_eq!(response.status(), 400);
    let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
    assert!(body.contains("synapse.v1"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_close_only_their_own_session_with_a_readable_reason() {
    let server = start_relay().await;
    let (publisher, mut listener, mic) = live_pair(&server).await;

    // An unknown message type.
    let mut socket = raw_socket(&server).await;
    socket
        .send(control(&join_request("room", "bad-type")))
        .await
        .unwrap();
    socket
        .send(Message::Binary(Bytes::from_static(&[0x09, 1, 2])))
        .await
        .unwrap();
    let (code, reason) = close_of(&mut socket).await;
    assert_eq!(code, 4001, "{reason}");
    assert!(
        reason.contains("unknown WebSocket message type"),
        "{reason}"
    );

    // Text is not part of the protocol.
    let mut socket = raw_socket(&server).await;
    socket.send(Message::Text("hello".into())).await.unwrap();
    let (code, reason) = close_of(&mut socket).await;
    assert_eq!(code, 1003, "{reason}");
    assert!(reason.contains("text messages"), "{reason}");

    // A control message that declares more than the limit: the error, then the close.
    let mut socket = raw_socket(&server).await;
    let mut huge = BytesMut::new();
    huge.put_u8(mux::CONTROL);
    huge.put_u32(10 << 20);
    socket.send(Message::Binary(huge.freeze())).await.unwrap();
    let (code, reason) = close_of(&mut socket).await;
    assert_eq!(code, 4001, "{reason}");
    assert!(reason.contains("message_too_large"), "{reason}");

    // A message over the size limit.
    let mut socket = raw_socket(&server).await;
    let mut big = vec![mux::DATAGRAM];
    big.resize(mux::MAX_MESSAGE + 2, 0);
    let _ = socket.send(Message::Binary(big.into())).await;
    let (code, reason) = close_of(&mut socket).await;
    assert_eq!(code, 1009, "{reason}");
    assert!(reason.contains("limited to"), "{reason}");

    // More streams open at once than allowed.
    let mut socket = raw_socket(&server).await;
    socket
        .send(control(&join_request("room", "streams")))
        .await
        .unwrap();
    for id in 0..=mux::MAX_OPEN_STREAMS as u64 {
        let open = MuxMessage::Stream {
            id,
            data: Bytes::new(),
        };
        if socket.send(Message::Binary(open.encode())).await.is_err() {
            break;
        }
    }
    let (code, reason) = close_of(&mut socket).await;
    assert_eq!(code, 4001, "{reason}");
    assert!(reason.contains("open streams"), "{reason}");

    // A session that never joins.
    let mut socket = raw_socket(&server).await;
    socket
        .send(Message::Binary(
            MuxMessage::Datagram(Bytes::from_static(&[1])).encode(),
        ))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let (code, reason) =
        tokio::time::timeout(patient(Duration::from_secs(15)), close_of(&mut socket))
            .await
            .unwrap();
    assert_eq!((code, reason.as_str()), (4003, "join timeout"));
    assert!(started.elapsed() >= Duration::from_secs(9));

    // Nobody else noticed.
    still_hears(&publisher, &mut listener, mic).await;
    assert_eq!(server.rooms().counts().peers, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_websocket_peer_is_told_why_and_the_room_goes_on() {
    let server = start_relay().await;
    let (publisher, mut listener, mic) = live_pair(&server).await;
    let mut ws = options(&server);
    ws.transport = TransportKind::WebSocket;
    let mut kicked = join_with(ws, "room", "kicked", false).await;
    let id = kicked.joined.peer_id;
    let (status, body) =
        http_request(&server, "DELETE", &format!("/admin/peers/{}", id.0), None).await;
    assert_eq!(status, 200, "{body}");
    let event = wait_event(&mut kicked.incoming, Duration::from_secs(5), |e| {
        matches!(e, ServerMessage::Error { .. })
    })
    .await;
    assert!(format!("{event:?}").contains("Kicked"), "{event:?}");
    let closed = tokio::time::timeout(patient(Duration::from_secs(5)), kicked.client.closed())
        .await
        .unwrap();
    assert!(closed.contains("4006"), "{closed}");
    still_hears(&publisher, &mut listener, mic).await;
}

/// A peer over WebSocket whose connection drops resumes its place (section 16) over
/// WebSocket again; the others see it interrupted, not gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_peer_resumes_its_place() {
    let server = start_relay().await;
    let watcher = join(&server, "room", "watcher", false).await;
    let mut ws = options(&server);
    ws.transport = TransportKind::WebSocket;
    ws.extensions.push("resume".into());
    let first = join_with(ws.clone(), "room", "roamer", false).await;
    let token = first.joined.resume_token.clone().expect("a resume token");
    let id = first.joined.peer_id;
    let mic = first
        .client
        .produce(MediaKind::Audio, "opus")
        .await
        .unwrap();
    first.client.close();
    drop(first);
    let mut watcher = watcher;
    wait_event(&mut watcher.incoming, Duration::from_secs(5), |e| {
        format!("{e:?}").contains("PeerInterrupted")
    })
    .await;
    let (client, _incoming) = synapse_sfu::client::Client::connect(ws).await.unwrap();
    let resumed = client.resume("room", "roamer", id, &token).await.unwrap();
    assert_eq!(resumed.peer_id, id);
    assert!(resumed.resumed);
    assert_eq!(client.transport(), TransportKind::WebSocket);
    assert!(resumed.producers.iter().any(|p| p.producer_id == mic));
}

/// A relay with a real certificate speaks TLS on its TCP side: its page and health over
/// https, sessions over wss; a wss peer and a WebTransport peer hear each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_a_certificate_takes_sessions_over_wss() {
    let dir = temp_dir("tls");
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    // Short-lived, so that WebTransport may pin it too (at most 14 days).
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let cert = params.self_signed(&key_pair).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key_pair.serialize_pem()).unwrap();
    let server = start_relay_with(synapse_sfu::server::ServerConfig {
        cert: Some(dir.join("cert.pem")),
        key: Some(dir.join("key.pem")),
        ..test_config()
    })
    .await;
    assert!(!server.development_identity());

    // Trust exactly this certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let tls = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );

    // Plain HTTP is not served any more; https is.
    let port = server.http_addr().unwrap().port();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut https = tokio_rustls::TlsConnector::from(tls.clone())
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS on the TCP side");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    https
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut health = String::new();
    https.read_to_string(&mut health).await.unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(
        health.contains("\"development_identity\":false"),
        "{health}"
    );

    let url = format!("https://localhost:{}/", server.local_addr().port());
    let pin = synapse_sfu::client::Verification::Pin(server.certificate_sha256());
    let mut over_wss = synapse_sfu::client::ClientOptions::new(&url, pin.clone());
    over_wss.transport = TransportKind::WebSocket;
    over_wss.websocket_tls = Some(tls);
    let mut wss_peer = join_with(over_wss, "secure", "wss", true).await;
    let mut quic_peer = join_with(
        synapse_sfu::client::ClientOptions::new(&url, pin),
        "secure",
        "wt",
        true,
    )
    .await;
    let wss_mic = wss_peer
        .client
        .produce(MediaKind::Audio, "opus")
        .await
        .unwrap();
    let quic_mic = quic_peer
        .client
        .produce(MediaKind::Audio, "opus")
        .await
        .unwrap();
    wait_for_relay(&server, Duration::from_secs(5), |c| c.consumers == 2).await;
    for seq in 0..20 {
        send_audio(&wss_peer.client, wss_mic, seq);
        send_audio(&quic_peer.client, quic_mic, seq);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for (peer, from) in [(&mut wss_peer, quic_mic), (&mut quic_peer, wss_mic)] {
        let heard = collect_until(&mut peer.incoming, Duration::from_secs(5), |r| {
            r.get(&from).is_some_and(|f| f.len() >= 18)
        })
        .await;
        assert!(heard.get(&from).is_some_and(|f| f.len() >= 18), "{heard:?}");
    }
}
