//! A service whose inner service can be replaced while it serves: hot reload.
//!
//! [`reloadable`] wraps a service into a [`Reloadable`] (the service you serve) and a
//! [`ReloadHandle`] (what you keep to replace it). [`ReloadHandle::reload`] swaps in a new
//! inner service atomically:
//! - requests that arrive afterwards go to the new one;
//! - requests already in flight finish on the one they started on, which is dropped when
//!   the last of them is done;
//! - no request waits for the swap, and no lock is taken on the request path (each request
//!   reads the current service through [`arc_swap`](https://docs.rs/arc-swap)).
//!
//! For a gateway, build the replacement with
//! [`keep_state_of`](crate::builder::GatewayBuilder::keep_state_of) so that routes whose
//! policies did not change keep their rate-limit budgets, breaker state and bulkhead slots.
//! The example gateway reloads its config file this way on `SIGHUP` and when the file
//! changes.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use http::{Request, Response};
//! use tower::{ServiceExt, service_fn};
//! use tower_gateway::reload::reloadable;
//!
//! fn answering(text: &'static str) -> impl tower::Service<
//!     Request<()>, Response = Response<&'static str>, Error = std::convert::Infallible,
//!     Future = std::future::Ready<Result<Response<&'static str>, std::convert::Infallible>>,
//! > + Clone {
//!     service_fn(move |_req: Request<()>| std::future::ready(Ok(Response::new(text))))
//! }
//!
//! let (svc, handle) = reloadable(answering("old"));
//! assert_eq!(*svc.clone().oneshot(Request::new(())).await.unwrap().body(), "old");
//! handle.reload(answering("new"));
//! assert_eq!(*svc.oneshot(Request::new(())).await.unwrap().body(), "new");
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use tower::Service;
use tower::util::Oneshot;

/// Wraps `service` so that it can be replaced while it serves: the [`Reloadable`] to serve,
/// and the [`ReloadHandle`] that replaces what it serves.
pub fn reloadable<S>(service: S) -> (Reloadable<S>, ReloadHandle<S>) {
    let current = Arc::new(ArcSwap::from_pointee(service));
    (
        Reloadable {
            current: Arc::clone(&current),
        },
        ReloadHandle { current },
    )
}

/// Serves whatever its [`ReloadHandle`] last put in; see the [module docs](self).
///
/// Cloning is a reference-count bump. Each request is served by a clone of the current
/// inner service, driven ready in the response future, so `poll_ready` is always ready.
pub struct Reloadable<S> {
    current: Arc<ArcSwap<S>>,
}

impl<S> Clone for Reloadable<S> {
    fn clone(&self) -> Self {
        Self {
            current: Arc::clone(&self.current),
        }
    }
}

impl<S> fmt::Debug for Reloadable<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloadable").finish_non_exhaustive()
    }
}

impl<S, Req> Service<Req> for Reloadable<S>
where
    S: Service<Req> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Oneshot<S, Req>;

    /// Always ready: readiness is the current inner service's business, in the future.
    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let service = S::clone(&self.current.load());
        Oneshot::new(service, req)
    }
}

/// Replaces what a [`Reloadable`] serves; see the [module docs](self).
pub struct ReloadHandle<S> {
    current: Arc<ArcSwap<S>>,
}

impl<S> Clone for ReloadHandle<S> {
    fn clone(&self) -> Self {
        Self {
            current: Arc::clone(&self.current),
        }
    }
}

impl<S> fmt::Debug for ReloadHandle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadHandle").finish_non_exhaustive()
    }
}

impl<S> ReloadHandle<S> {
    /// Serves `service` from now on; returns the service it replaces (which requests still
    /// in flight keep using through their own clones).
    pub fn reload(&self, service: S) -> Arc<S> {
        self.current.swap(Arc::new(service))
    }

    /// The service served now.
    pub fn current(&self) -> Arc<S> {
        self.current.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::oneshot;
    use tower::ServiceExt;

    /// Answers its name once `gate` opens (or at once without one), counting calls.
    #[derive(Clone)]
    struct Named {
        name: &'static str,
        calls: Arc<AtomicUsize>,
        gate: Option<Arc<tokio::sync::Mutex<Option<oneshot::Receiver<()>>>>>,
    }

    impl Service<()> for Named {
        type Response = &'static str;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<&'static str, Infallible>> + Send>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, (): ()) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let name = self.name;
            let gate = self.gate.clone();
            Box::pin(async move {
                if let Some(gate) = gate {
                    if let Some(rx) = gate.lock().await.take() {
                        let _ = rx.await;
                    }
                }
                Ok(name)
            })
        }
    }

    fn named(name: &'static str) -> Named {
        Named {
            name,
            calls: Arc::default(),
            gate: None,
        }
    }

    #[tokio::test]
    async fn a_request_in_flight_finishes_on_the_service_it_started_on() {
        let (open, gate) = oneshot::channel();
        let old = Named {
            gate: Some(Arc::new(tokio::sync::Mutex::new(Some(gate)))),
            ..named("old")
        };
        let (svc, handle) = reloadable(old);
        let in_flight = tokio::spawn(svc.clone().oneshot(()));
        tokio::task::yield_now().await;
        let replaced = handle.reload(named("new"));
        assert_eq!(replaced.name, "old");
        assert_eq!(svc.clone().oneshot(()).await.unwrap(), "new");
        open.send(()).unwrap();
        assert_eq!(in_flight.await.unwrap().unwrap(), "old");
        assert_eq!(handle.current().name, "new");
    }

    #[tokio::test]
    async fn clones_and_handles_see_the_same_service() {
        let (svc, handle) = reloadable(named("a"));
        let other = svc.clone();
        handle.clone().reload(named("b"));
        assert_eq!(other.oneshot(()).await.unwrap(), "b");
        assert_eq!(svc.oneshot(()).await.unwrap(), "b");
    }
}
