//! gRPC through the gateway with a real gRPC stack: tonic's client and server, the client
//! speaking h2c (and h2 over TLS) to the gateway, the gateway speaking h2c to the server.
//! Unary and bidirectional streaming calls, `grpc-status` (and the message) in trailers,
//! custom metadata both ways, and `grpc-timeout` passed through unchanged.
//!
//! The service is written by hand on tonic's server machinery with a codec of raw bytes, so
//! no protobuf compiler is needed.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use futures_util::StreamExt;
use http::uri::PathAndQuery;
use tokio::net::TcpListener;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};
use tower_gateway::builder::{Gateway, Route};
use tower_gateway::tls::ServerTls;

use common::tls::{Pki, client_config, tls_connect};

/// Messages are raw bytes.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// `test.Echo`: `Unary` answers the message upper-cased (or `NOT_FOUND` for `missing`),
/// with the `grpc-timeout` it was sent as `x-seen-timeout` metadata; `Chat` answers each
/// message as `echo:<message>` as it arrives, and ends with `OK` and a trailer.
#[derive(Clone)]
struct Echo;

impl NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

#[derive(Clone)]
struct Unary;

impl tower::Service<Request<Bytes>> for Unary {
    type Response = Response<Bytes>;
    type Error = Status;
    type Future = std::future::Ready<Result<Response<Bytes>, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let timeout = req
            .metadata()
            .get("grpc-timeout")
            .map(|v| v.to_str().unwrap().to_owned());
        let message = req.into_inner();
        if message.as_ref() == b"missing" {
            return std::future::ready(Err(Status::not_found("no such thing, sorry")));
        }
        let mut res = Response::new(Bytes::from(message.to_ascii_uppercase()));
        if let Some(timeout) = timeout {
            res.metadata_mut()
                .insert("x-seen-timeout", timeout.parse().unwrap());
        }
        std::future::ready(Ok(res))
    }
}

type Replies = Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, Status>> + Send>>;

#[derive(Clone)]
struct Chat;

impl tower::Service<Request<Streaming<Bytes>>> for Chat {
    type Response = Response<Replies>;
    type Error = Status;
    type Future = std::future::Ready<Result<Response<Replies>, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Streaming<Bytes>>) -> Self::Future {
        let replies = req.into_inner().map(|message| {
            message.map(|m| {
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&m);
                Bytes::from(reply)
            })
        });
        let mut res = Response::new(Box::pin(replies) as Replies);
        res.metadata_mut().insert("x-chat", "open".parse().unwrap());
        std::future::ready(Ok(res))
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(Raw);
            Ok(match req.uri().path() {
                "/test.Echo/Unary" => grpc.unary(Unary, req).await,
                "/test.Echo/Chat" => grpc.streaming(Chat, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// The tonic server on a fresh port (h2c), the gateway in front of it routing `/` there.
async fn start(tls: Option<ServerTls>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .serve_with_incoming(Echo, tonic::transport::server::TcpIncoming::from(listener)),
    );
    common::tls::serve_gateway(
        Gateway::builder().route(
            "/test.Echo",
            Route::to([format!("h2c://{upstream}")]).strip_prefix(false),
        ),
        tls,
    )
    .await
}

async fn calls(channel: tonic::transport::Channel) {
    let mut client = tonic::client::Grpc::new(channel);

    // Unary, with a deadline the server sees exactly as sent.
    client.ready().await.unwrap();
    let mut req = Request::new(Bytes::from_static(b"hello"));
    req.metadata_mut()
        .insert("grpc-timeout", "2500m".parse().unwrap());
    let res = client
        .unary(req, PathAndQuery::from_static("/test.Echo/Unary"), Raw)
        .await
        .expect("the unary call succeeds");
    assert_eq!(res.metadata().get("x-seen-timeout").unwrap(), "2500m");
    assert!(res.metadata().contains_key("x-correlation-id"));
    assert_eq!(res.into_inner().as_ref(), b"HELLO");

    // An error status and its message come back as sent.
    client.ready().await.unwrap();
    let status = client
        .unary(
            Request::new(Bytes::from_static(b"missing")),
            PathAndQuery::from_static("/test.Echo/Unary"),
            Raw,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "no such thing, sorry");

    // Bidirectional streaming: each reply arrives before the next message is sent, then
    // the trailers with OK.
    client.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let outgoing =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let res = client
        .streaming(
            Request::new(outgoing),
            PathAndQuery::from_static("/test.Echo/Chat"),
            Raw,
        )
        .await
        .expect("the stream opens");
    assert_eq!(res.metadata().get("x-chat").unwrap(), "open");
    let mut replies = res.into_inner();
    for word in ["one", "two", "three"] {
        tx.send(Bytes::from(word)).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("a reply before the stream ends: nothing buffers it")
            .unwrap()
            .unwrap();
        assert_eq!(reply, format!("echo:{word}").as_bytes());
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());
    let trailers = replies.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
}

#[tokio::test]
async fn unary_and_bidirectional_calls_pass_through_h2c_with_their_trailers() {
    let addr = start(None).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    calls(channel).await;
}

#[tokio::test]
async fn unary_and_bidirectional_calls_pass_through_h2_over_tls() {
    let pki = Pki::new();
    let server = pki.server("server", &["localhost"]);
    let tls = ServerTls::builder(&server.cert, &server.key)
        .build()
        .unwrap();
    let addr = start(Some(tls)).await;
    let config = client_config(&pki, None, &[b"h2"]);
    let connector = tower::service_fn(move |_: http::Uri| {
        let config = config.clone();
        async move {
            let stream = tls_connect(addr, "localhost", config).await?;
            assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://localhost:{}", addr.port()))
            .unwrap()
            .connect_with_connector(connector)
            .await
            .unwrap();
    calls(channel).await;
}
