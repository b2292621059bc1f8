//! The server speaks cleartext HTTP/2 (h2c, prior knowledge) beside HTTP/1.1 on the same
//! port: many requests in flight on one connection, each answered as over HTTP/1.1, the token
//! still checked before the body.

mod common;

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use silo::FunctionStorage;
use silo::wire::{self, StorageOp, StorageReply, StorageRequest};
use silo_server::{Auth, Config};

const TOKEN: &str = "h2-token-0123456789";

fn rpc(url: &str, token: Option<&str>, op: StorageOp) -> Request<Full<Bytes>> {
    let body = wire::encode(&StorageRequest {
        idempotency_key: None,
        op,
    })
    .unwrap();
    let mut request = Request::post(format!("{url}/rpc"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request.body(Full::new(Bytes::from(body))).unwrap()
}

#[test]
fn h2c_requests_share_one_connection_and_are_answered_as_over_http1() {
    let store: Arc<dyn FunctionStorage> = Arc::new(silo::MemoryStorage::new());
    let server = common::start(Config {
        auth: Auth::Token(TOKEN.into()),
        ..Config::new(store.clone())
    });
    let url = server.url();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        // 64 puts in flight at once on the one connection.
        let mut puts = tokio::task::JoinSet::new();
        for i in 0..64u8 {
            let mut sender = sender.clone();
            let request = rpc(
                &url,
                Some(TOKEN),
                StorageOp::KvPut {
                    scope: b"s".into(),
                    key: vec![i].into(),
                    value: vec![i; 100].into(),
                },
            );
            puts.spawn(async move {
                let response = sender.send_request(request).await.unwrap();
                let version = response.version();
                let status = response.status();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (version, status, body)
            });
        }
        while let Some(done) = puts.join_next().await {
            let (version, status, body) = done.unwrap();
            assert_eq!(version, Version::HTTP_2);
            assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            assert_eq!(
                wire::decode::<StorageReply>(&body).unwrap(),
                StorageReply::Unit
            );
        }
        let mut sender = sender.clone();
        let get = rpc(
            &url,
            Some(TOKEN),
            StorageOp::KvGet {
                scope: b"s".into(),
                key: vec![63].into(),
            },
        );
        let response = sender.send_request(get).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            wire::decode::<StorageReply>(&body).unwrap(),
            StorageReply::MaybeBytes(Some(vec![63; 100].into()))
        );
        let anonymous = rpc(&url, None, StorageOp::QueuePop { scope: b"s".into() });
        let response = sender.send_request(anonymous).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    });
    for i in 0..64u8 {
        assert_eq!(store.kv_get(b"s", &[i]).unwrap(), Some(vec![i; 100]));
    }
    // HTTP/1.1 on the same port, as before.
    let client = silo::http::HttpStorage::new(
        &url,
        silo::http::HttpOptions {
            token: Some(TOKEN.into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(client.kv_get(b"s", &[0]).unwrap(), Some(vec![0; 100]));
}
