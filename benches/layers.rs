//! Each layer's pass-through cost against a bare service, per request.
//!
//! Every row drives the same `service_fn` (which answers with a ready response carrying two
//! headers) through `poll_ready` and `call` on a fresh request built outside the timing; a
//! layer's overhead is its row minus `bare`. Run with `cargo bench --bench layers`.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response, header};
use tower::{Layer, Service, ServiceBuilder};
use tower_gateway::correlation_id::CorrelationIdLayer;
use tower_gateway::hop_by_hop::HopByHopLayer;

type Req = Request<()>;

fn upstream(_req: Req) -> Ready<Result<Response<()>, Infallible>> {
    let mut res = Response::new(());
    res.headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    res.headers_mut()
        .insert(header::CONTENT_LENGTH, "42".parse().unwrap());
    ready(Ok(res))
}

/// A typical proxied GET: eight end-to-end headers.
fn request(extra: &[(&'static str, &'static str)]) -> Req {
    let mut builder = Request::get("/api/a/ping?x=1")
        .header(header::HOST, "gateway.local")
        .header(header::USER_AGENT, "wrk/4.2")
        .header(header::ACCEPT, "*/*")
        .header(header::ACCEPT_ENCODING, "gzip")
        .header("x-api-key", "alice-secret")
        .header("x-forwarded-for", "10.0.0.7")
        .header(header::COOKIE, "session=abc")
        .header(header::REFERER, "https://example.com/");
    for (name, value) in extra {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap()
}

/// One request through `svc`, the way a server drives it.
fn drive<S>(svc: &mut S, req: Req) -> Response<()>
where
    S: Service<Req, Response = Response<()>, Error = Infallible>,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let fut = pin!(svc.call(req));
    match fut.poll(&mut cx) {
        Poll::Ready(Ok(res)) => res,
        _ => unreachable!("the bench service answers at once"),
    }
}

fn bench_row<S>(
    c: &mut Criterion,
    name: &str,
    mut svc: S,
    extra: &'static [(&'static str, &'static str)],
) where
    S: Service<Req, Response = Response<()>, Error = Infallible>,
{
    c.bench_function(name, |b| {
        b.iter_batched(
            || request(extra),
            |req| black_box(drive(&mut svc, req)),
            BatchSize::SmallInput,
        )
    });
}

fn layers(c: &mut Criterion) {
    let bare = || tower::service_fn(upstream);
    bench_row(c, "bare", bare(), &[]);

    bench_row(
        c,
        "correlation_id/keep_client_id",
        CorrelationIdLayer::new().layer(bare()),
        &[("x-correlation-id", "3f1c2a9e-6b7d-4c5e-8f90-1a2b3c4d5e6f")],
    );
    bench_row(
        c,
        "correlation_id/generate",
        CorrelationIdLayer::new().layer(bare()),
        &[],
    );

    bench_row(
        c,
        "hop_by_hop/clean",
        HopByHopLayer::new().layer(bare()),
        &[],
    );
    bench_row(
        c,
        "hop_by_hop/keep_alive",
        HopByHopLayer::new().layer(bare()),
        &[("connection", "keep-alive"), ("keep-alive", "timeout=5")],
    );

    let both = ServiceBuilder::new()
        .layer(CorrelationIdLayer::new())
        .layer(HopByHopLayer::new())
        .service(bare());
    bench_row(c, "correlation_id+hop_by_hop/generate", both, &[]);
}

criterion_group!(benches, layers);
criterion_main!(benches);
