//! HTTP upgrades (WebSocket): when the upstream answers `101 Switching Protocols`, the
//! client's and the upstream's connections are joined into one two-way tunnel.

use http::HeaderMap;
use http::header;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::extensions::UpgradeGuards;

/// Whether the request asks to switch protocols (`Connection: upgrade` and an `Upgrade`).
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|value| {
            value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        })
}

/// Removes the request's ask to switch protocols (`Upgrade`, and `Connection`, which is
/// this hop's alone anyway).
pub(crate) fn strip_upgrade(headers: &mut HeaderMap) {
    headers.remove(header::UPGRADE);
    headers.remove(header::CONNECTION);
}

/// Waits for both sides to finish switching, then copies bytes both ways until either side
/// closes. Runs in its own task, outside the request's lifetime, and keeps `guards` (a
/// bulkhead slot, say) until it ends.
pub(crate) async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, guards: UpgradeGuards) {
    let _guards = guards;
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(%error, "upgrade failed before the tunnel opened");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((to_upstream, to_client)) => {
            tracing::debug!(to_upstream, to_client, "tunnel closed");
        }
        Err(error) => tracing::debug!(%error, "tunnel broke"),
    }
}
