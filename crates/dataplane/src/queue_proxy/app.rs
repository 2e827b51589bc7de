//! The instance's process as its queue proxy sees it: probing its readiness, and forwarding
//! requests to it across its restarts.
//!
//! The probe loop owns readiness, but for one thing: a request that finds the process gone marks
//! the instance unready at once (the agent and the gateway follow that watch) and has the loop
//! look again now, and eagerly until the process is back (the agent restarts it after a backoff of
//! a second or more). The request waits for readiness within its own timeout, then goes again if
//! it cannot have reached the process (no connection could be opened), or once if it is
//! idempotent, has no body and its connection closed before any byte of an answer (the process
//! died with it). Anything else fails as before (502); a drain ends the wait (503).

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::{Inner, InnerRef, ProbeAction, QueueProxyConfig};
use crate::metrics::ResentLabels;
use ikukantai_http::body::{Body, Limited, full};
use ikukantai_http::pool::{Forwarding, PooledBody, Unanswered, Upstream, UpstreamError, idempotent};

/// Most of a probe response's body that is read (the kubelet's limit); the rest is not waited for.
const PROBE_BODY_LIMIT: u64 = 10 * 1024;

/// One readiness check; HTTP probes go over `probes`, connections of their own (probes must not
/// take, or wait for, a request's), kept from one probe to the next.
async fn check(config: &QueueProxyConfig, probes: &Upstream, limit: Duration) -> bool {
    let attempt = async {
        match &config.readiness.action {
            ProbeAction::Tcp => TcpStream::connect(config.app).await.is_ok(),
            ProbeAction::Http { path, headers } => {
                let mut req = Request::get(path.as_str());
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                let Ok(req) = req.header("user-agent", "ikukantai-queue-proxy-probe").body(full("")) else {
                    return false;
                };
                let Ok(response) = probes.send(req).await else { return false };
                let ready = response.status().is_success() || response.status().is_redirection();
                // Read to its end, so that the connection carries the next probe too.
                let _ = Limited::new(response.into_body(), PROBE_BODY_LIMIT).collect().await;
                ready
            }
        }
    };
    timeout(limit, attempt).await.unwrap_or(false)
}

/// Probes the process for as long as the queue proxy runs, and says whether it is ready.
pub(super) async fn probe_loop(inner: Arc<InnerRef>) {
    let inner = &inner.0;
    let r = &inner.config.readiness;
    tokio::time::sleep(r.initial_delay).await;
    let aggressive = r.period.is_zero();
    // Aggressive probing starts at 1 ms and backs off to Knative's 50 ms, so a fast-starting
    // instance is seen within a millisecond or two of listening (cold starts pay for every ms).
    let mut startup_pause = Duration::from_millis(1);
    // Pausing as at startup until ready; also after a request found the process gone, whatever
    // the period: requests are waiting for it.
    let mut eager = aggressive;
    let probes = Upstream::direct(inner.config.app);
    let (mut ok_run, mut fail_run) = (0u32, 0u32);
    let mut woken = false;
    loop {
        if std::mem::take(&mut woken) {
            // A request found the process gone and marked it unready ([`gone`]): start over.
            (ok_run, fail_run, startup_pause, eager) = (0, 0, Duration::from_millis(1), true);
        }
        let limit = if aggressive && !*inner.ready.borrow() { Duration::from_millis(100) } else { r.timeout };
        // A check under way when the process is found gone may have begun before it died: its
        // answer is not taken.
        let checked = tokio::select! {
            biased;
            () = inner.reprobe.notified() => None,
            ok = check(&inner.config, &probes, limit) => Some(ok),
        };
        let Some(ok) = checked else {
            woken = true;
            continue;
        };
        if ok {
            ok_run += 1;
            fail_run = 0;
            if ok_run >= r.success_threshold && !*inner.ready.borrow() {
                inner.ready.send_replace(true);
                eager = aggressive;
            }
        } else {
            fail_run += 1;
            ok_run = 0;
            if fail_run >= r.failure_threshold && *inner.ready.borrow() {
                inner.ready.send_replace(false);
                startup_pause = Duration::from_millis(1);
            }
        }
        let pause = match (eager, *inner.ready.borrow()) {
            (true, false) => {
                let p = startup_pause;
                startup_pause = (startup_pause * 2).min(Duration::from_millis(50));
                p
            }
            (_, true) if aggressive => Duration::from_secs(1),
            _ => r.period,
        };
        woken = tokio::select! {
            biased;
            () = inner.reprobe.notified() => true,
            () = tokio::time::sleep(pause) => false,
        };
    }
}

/// The process is gone: unready at once (followers are woken only if it was ready), and the probe
/// loop looks again now.
fn gone(inner: &Inner) {
    inner.ready.send_if_modified(|ready| std::mem::replace(ready, false));
    inner.reprobe.notify_one();
}

/// Why a request [`forward`] sent got no response.
pub(super) enum Failure {
    /// The process did not answer, and the request may not go again (502).
    Upstream(UpstreamError),
    /// A drain started while the request waited for the process to come back (503).
    Draining,
}

/// Waits until the process is ready again, or a drain starts (the probe loop is stopped by then).
async fn wait_ready(inner: &Inner) -> Result<(), Failure> {
    let mut drain = pin!(inner.drain_started.notified());
    // Registered before the flag is read: a drain starting in between is not missed.
    drain.as_mut().enable();
    if inner.draining.load(Ordering::SeqCst) {
        return Err(Failure::Draining);
    }
    let mut ready = inner.ready.subscribe();
    tokio::select! {
        biased;
        () = drain => Err(Failure::Draining),
        // `inner` holds the sender, so this ends only once ready.
        _ = ready.wait_for(|ready| *ready) => Ok(()),
    }
}

/// Forwards `req` to the process; when it is gone, waits for it to be ready again and sends the
/// request again if it may go (module docs). Sets `waited` when a wait starts, for the message of
/// a timeout that cuts it.
pub(super) async fn forward(
    inner: &Inner,
    mut req: Request<Body>,
    forwarding: Forwarding<'_>,
    waited: &mut bool,
) -> Result<Response<PooledBody>, Failure> {
    let mut lost_once = false;
    loop {
        let Unanswered { error, request } = match inner.app.forward_again(req, forwarding).await {
            Ok(response) => return Ok(response),
            Err(unanswered) => unanswered,
        };
        let again = match request {
            // It never reached the process: as often as the timeout allows.
            Some(r) if matches!(error, UpstreamError::Connect { .. }) => Some((r, "unreachable")),
            // It may have: once, and only if it may be repeated.
            Some(r) if !lost_once && idempotent(r.method(), r.headers()) => {
                lost_once = true;
                Some((r, "lost"))
            }
            _ => None,
        };
        let Some((again, reason)) = again else { return Err(Failure::Upstream(error)) };
        tracing::debug!(
            instance = %inner.config.instance, %error,
            "the instance's process is gone; waiting for it to be ready again"
        );
        gone(inner);
        *waited = true;
        wait_ready(inner).await?;
        inner.metrics.resent.get_or_create(&ResentLabels { instance: inner.labels.clone(), reason }).inc();
        req = again;
    }
}
