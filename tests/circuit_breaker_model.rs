//! The circuit breaker against a model: random runs of requests, answers (`200`, `404`,
//! `500`), hang-ups and time steps on tokio's paused clock drive the public
//! `CircuitBreakerLayer` (both trip policies) in front of a `service_fn`, and after every
//! step its state, each admission or refusal (with its `Retry-After`), what reached the
//! upstream and every state change must be what a small reference model says.

use std::convert::Infallible;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed};
use tokio::sync::{mpsc, oneshot};
use tower::{Layer, ServiceExt, service_fn};
use tower_gateway::circuit_breaker::{BreakerState, CircuitBreakerLayer, FailureRate};
use tower_gateway::rejection::{Rejection, RejectionKind};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;

#[derive(Clone, Copy, Debug)]
enum Policy {
    Consecutive(u32),
    /// Opens at `num / den` failed calls (compared exactly, in integers, by the model).
    Rate {
        num: u64,
        den: u64,
        window_ms: u64,
        min_calls: u32,
    },
}

#[derive(Clone, Copy, Debug)]
struct Setup {
    policy: Policy,
    cooldown_ms: u64,
    probes: u32,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    /// A request arrives.
    Send,
    /// One of the requests in flight is answered with this status.
    Answer(Index, u16),
    /// One of the requests in flight is dropped before its answer (its client hung up).
    Cancel(Index),
    /// Time passes, in milliseconds.
    Wait(u64),
}

/// Milliseconds from `min` to `max`; whole seconds or tenths two times in three, so that
/// runs often land exactly on the end of a cooldown or of a window's bucket.
fn millis(min: u64, max: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        min..=max,
        (min.div_ceil(1_000)..=max / 1_000).prop_map(|s| s * 1_000),
        (min.div_ceil(100)..=max / 100).prop_map(|t| t * 100),
    ]
}

fn setups() -> impl Strategy<Value = Setup> {
    let rates = prop::sample::select(vec![
        (1, 4),
        (3, 10),
        (1, 3),
        (1, 2),
        (3, 5),
        (2, 3),
        (1, 1),
    ]);
    let policy = prop_oneof![
        (1u32..=5).prop_map(Policy::Consecutive),
        (rates, millis(10, 20_000), 1u32..=8).prop_map(|((num, den), window_ms, min_calls)| {
            Policy::Rate {
                num,
                den,
                window_ms,
                min_calls,
            }
        }),
    ];
    (
        policy,
        prop_oneof![1 => Just(0), 9 => millis(1, 30_000)],
        1u32..=3,
    )
        .prop_map(|(policy, cooldown_ms, probes)| Setup {
            policy,
            cooldown_ms,
            probes,
        })
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let status = prop::sample::select(vec![200u16, 404, 500, 500]);
    let op = prop_oneof![
        4 => Just(Op::Send),
        4 => (any::<Index>(), status).prop_map(|(i, s)| Op::Answer(i, s)),
        1 => any::<Index>().prop_map(Op::Cancel),
        2 => prop_oneof![millis(0, 1_000), millis(1_000, 40_000)].prop_map(Op::Wait),
    ];
    prop::collection::vec(op, 1..200)
}

/// What the model says about a request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Admitted {
    /// Passed while closed, in the closed period numbered so.
    Closed(u64),
    /// Passed as a probe, in the half-open period numbered so.
    Probe(u64),
}

/// The breaker as the contract describes it, written for clarity rather than speed: all
/// calls kept in a list, periods numbered, time in nanoseconds since the breaker was made.
struct Model {
    setup: Setup,
    state: BreakerState,
    /// When it last opened.
    opened: u64,
    /// Numbers every stretch between two changes of state.
    period: u64,
    consecutive: u32,
    /// The closed period's answered calls: (bucket number, failed).
    calls: Vec<(u64, bool)>,
    probes_out: u32,
    changes: Vec<(BreakerState, BreakerState)>,
}

impl Model {
    fn new(setup: Setup) -> Self {
        Self {
            setup,
            state: BreakerState::Closed,
            opened: 0,
            period: 0,
            consecutive: 0,
            calls: Vec::new(),
            probes_out: 0,
            changes: Vec::new(),
        }
    }

    fn change(&mut self, to: BreakerState) {
        self.changes.push((self.state, to));
        self.state = to;
        self.period += 1;
    }

    fn cooldown(&self) -> u64 {
        self.setup.cooldown_ms * MS
    }

    /// Passed, or refused with the `Retry-After` seconds (none while probes are out).
    fn admit(&mut self, now: u64) -> Result<Admitted, Option<u64>> {
        if self.state == BreakerState::Open {
            let left = (self.opened + self.cooldown()).saturating_sub(now);
            if left > 0 {
                return Err(Some(left.div_ceil(SEC).max(1)));
            }
            self.change(BreakerState::HalfOpen);
        }
        match self.state {
            BreakerState::Closed => Ok(Admitted::Closed(self.period)),
            _ if self.probes_out < self.setup.probes => {
                self.probes_out += 1;
                Ok(Admitted::Probe(self.period))
            }
            _ => Err(None),
        }
    }

    fn open(&mut self, now: u64) {
        self.change(BreakerState::Open);
        self.opened = now;
    }

    fn outcome(&mut self, admitted: Admitted, failed: bool, now: u64) {
        match admitted {
            Admitted::Probe(period) => {
                self.probes_out -= 1;
                if period != self.period {
                    return;
                }
                if failed {
                    self.open(now);
                } else {
                    self.change(BreakerState::Closed);
                    self.consecutive = 0;
                    self.calls.clear();
                }
            }
            Admitted::Closed(period) if period == self.period => match self.setup.policy {
                Policy::Consecutive(threshold) => {
                    self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                    if self.consecutive >= threshold {
                        self.open(now);
                    }
                }
                Policy::Rate {
                    num,
                    den,
                    window_ms,
                    min_calls,
                } => {
                    // Ten buckets of a tenth of the window: the current one and nine before.
                    let bucket = now / (window_ms * MS / 10);
                    self.calls.push((bucket, failed));
                    let live = self.calls.iter().filter(|(b, _)| bucket - b < 10);
                    let calls = live.clone().count() as u64;
                    let failures = live.filter(|(_, f)| *f).count() as u64;
                    if failed && calls >= u64::from(min_calls) && failures * den >= num * calls {
                        self.open(now);
                    }
                }
            },
            Admitted::Closed(_) => {}
        }
    }

    fn cancel(&mut self, admitted: Admitted, now: u64) {
        if let Admitted::Probe(_) = admitted {
            self.outcome(admitted, true, now);
        }
    }
}

type Body = http_body_util::Full<bytes::Bytes>;
type Pending = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>>>>;

/// A request in flight: its response future, the upstream's answer channel, and what the
/// model said about it.
struct InFlight {
    fut: Pending,
    answer: oneshot::Sender<u16>,
    model: Admitted,
}

fn poll_once(fut: &mut Pending) -> Poll<Response<Body>> {
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(res) => Poll::Ready(res.unwrap()),
        Poll::Pending => Poll::Pending,
    }
}

fn layer_for(setup: Setup) -> CircuitBreakerLayer {
    let cooldown = Duration::from_millis(setup.cooldown_ms);
    let layer = match setup.policy {
        Policy::Consecutive(threshold) => {
            CircuitBreakerLayer::new(NonZeroU32::new(threshold).unwrap(), cooldown)
        }
        Policy::Rate {
            num,
            den,
            window_ms,
            min_calls,
        } => {
            let rate = FailureRate::new(
                num as f64 / den as f64,
                Duration::from_millis(window_ms),
                NonZeroU32::new(min_calls).unwrap(),
            )
            .unwrap();
            CircuitBreakerLayer::new(rate, cooldown)
        }
    };
    layer.probes(NonZeroU32::new(setup.probes).unwrap())
}

/// Runs `ops` against the breaker and the model, failing at the first difference.
async fn run(setup: Setup, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let changes = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&changes);
    let layer =
        layer_for(setup).on_state_change(move |t| record.lock().unwrap().push((t.from, t.to)));
    // The upstream hands each request's answer channel to the test, then answers what it
    // is sent.
    let (calls_tx, mut calls) = mpsc::unbounded_channel::<oneshot::Sender<u16>>();
    let svc = layer.layer(service_fn(move |_req: Request<()>| {
        let (answer, status) = oneshot::channel();
        calls_tx.send(answer).unwrap();
        async move {
            let status = status
                .await
                .expect("the test answers or drops the request first");
            let mut res = Response::new(Body::default());
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok::<_, Infallible>(res)
        }
    }));

    let mut model = Model::new(setup);
    let mut now = 0;
    let mut in_flight: Vec<InFlight> = Vec::new();
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Send => {
                let mut fut: Pending = Box::pin(svc.clone().oneshot(Request::new(())));
                let polled = poll_once(&mut fut);
                let reached = calls.try_recv().ok();
                match (model.admit(now), polled, reached) {
                    (Ok(admitted), Poll::Pending, Some(answer)) => in_flight.push(InFlight {
                        fut,
                        answer,
                        model: admitted,
                    }),
                    (Err(retry_after), Poll::Ready(res), None) => {
                        prop_assert_eq!(res.status(), 503, "step {}", step);
                        let kind = res.extensions().get::<Rejection>().map(Rejection::kind);
                        prop_assert_eq!(kind, Some(RejectionKind::CircuitOpen));
                        let header = res
                            .headers()
                            .get("retry-after")
                            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
                        prop_assert_eq!(header, retry_after, "Retry-After at step {}", step);
                    }
                    (model, polled, reached) => prop_assert!(
                        false,
                        "step {}: the model says {:?}, the breaker {} and the upstream {}",
                        step,
                        model,
                        if polled.is_pending() {
                            "passed it"
                        } else {
                            "answered"
                        },
                        if reached.is_some() {
                            "saw it"
                        } else {
                            "did not"
                        },
                    ),
                }
            }
            Op::Answer(pick, status) if !in_flight.is_empty() => {
                let mut req = in_flight.remove(pick.index(in_flight.len()));
                req.answer.send(status).unwrap();
                match poll_once(&mut req.fut) {
                    Poll::Ready(res) => prop_assert_eq!(res.status().as_u16(), status),
                    Poll::Pending => prop_assert!(false, "step {}: answered, still pending", step),
                }
                model.outcome(req.model, status >= 500, now);
            }
            Op::Cancel(pick) if !in_flight.is_empty() => {
                let req = in_flight.remove(pick.index(in_flight.len()));
                drop(req.fut);
                model.cancel(req.model, now);
            }
            Op::Answer(..) | Op::Cancel(_) => {}
            Op::Wait(ms) => {
                tokio::time::advance(Duration::from_millis(ms)).await;
                now += ms * MS;
            }
        }
        prop_assert_eq!(
            layer.state(),
            model.state,
            "state after step {} ({:?})",
            step,
            op
        );
        prop_assert_eq!(
            &*changes.lock().unwrap(),
            &model.changes,
            "changes after step {}",
            step
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config {
        cases: 256,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x0062_7265_616b_6572),
        ..Config::default()
    })]

    #[test]
    fn the_breaker_behaves_like_its_model(setup in setups(), ops in ops()) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(run(setup, ops))?;
    }
}
