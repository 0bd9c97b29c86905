//! One pick of an upstream endpoint per policy, with 3 and with 100 endpoints: the pick, the
//! in-flight count it takes, and giving it back (what each proxied attempt pays for its
//! pool). Run with `cargo bench --bench pool`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderName, Request};
use http_body_util::Empty;
use tower_gateway::upstream::{HashKey, LeastInFlight, Policy, PoolBuilder};

fn picks(c: &mut Criterion) {
    let user = HeaderName::from_static("x-user-id");
    // 1,024 requests with distinct keys, taken in turn, so a hash pick is not one cached path.
    let requests: Vec<Request<Empty<Bytes>>> = (0..1024)
        .map(|i| {
            Request::get("/orders/42")
                .header(&user, format!("user-{i}"))
                .body(Empty::new())
                .unwrap()
        })
        .collect();
    let policies = [
        ("round_robin", Policy::RoundRobin),
        (
            "least_in_flight",
            Policy::LeastInFlight(LeastInFlight::new()),
        ),
        ("weighted", Policy::Weighted),
        ("hash", Policy::Hash(HashKey::Header(user.clone()))),
    ];
    let mut group = c.benchmark_group("pick");
    for endpoints in [3, 100] {
        for (name, policy) in &policies {
            let urls = (0..endpoints).map(|i| {
                (
                    format!("http://10.0.{}.{}:8080", i / 250, i % 250),
                    1 + (i % 3) as u32,
                )
            });
            let pool = PoolBuilder::weighted(urls)
                .policy(policy.clone())
                .build()
                .expect("a valid pool");
            let mut next = 0;
            group.bench_function(format!("{name}/{endpoints}"), |b| {
                b.iter(|| {
                    let req = &requests[next % requests.len()];
                    next += 1;
                    black_box(pool.pick(black_box(req)).expect("an endpoint"));
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, picks);
criterion_main!(benches);
