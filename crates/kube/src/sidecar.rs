//! `ikukantai queue-proxy`: the queue proxy as the sidecar of every instance Pod. Configured
//! by the environment the controller writes into the Pod ([`crate::pod::env`]); pushes its
//! stats to the controller every second; drains on SIGTERM (after a notice period, serving but
//! unready, and answering the instance's preStop hook `/wait-for-drain` once it is done).

use std::net::SocketAddr;
use std::time::Duration;

use ikukantai_api::service::Probe;
use ikukantai_dataplane::queue_proxy::{QueueProxyConfig, QueueProxyHandle, Readiness};
use ikukantai_policy::queue::PriorityRule;
use tokio::net::TcpListener;

use crate::pod::{QUEUE_ADMIN_PORT, QUEUE_PORT, env};
use crate::wire::{InstanceStats, Pusher, STATS_PATH};

/// A bad or missing environment variable.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// Required and missing.
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    /// Present but wrong.
    #[error("environment variable {name}: {message}")]
    Invalid {
        /// Variable.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A listener could not be opened or the proxy could not start.
    #[error("queue proxy: {0}")]
    Start(String),
}

/// Everything the sidecar reads from its environment.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// The queue proxy's settings.
    pub proxy: QueueProxyConfig,
    /// Serving port.
    pub port: u16,
    /// Admin port.
    pub admin_port: u16,
    /// Where stats go (`None` = nowhere).
    pub controller_url: Option<String>,
    /// The token that says who pushes them ([`crate::auth`]; `None`: sent without).
    pub token_file: Option<std::path::PathBuf>,
    /// How long a stopping sidecar keeps serving, unready, before it refuses new work.
    pub drain_notice: Duration,
}

fn parse<T: std::str::FromStr>(name: &'static str, v: Option<String>, default: T) -> Result<T, SidecarError>
where
    T::Err: std::fmt::Display,
{
    match v.filter(|s| !s.trim().is_empty()) {
        None => Ok(default),
        Some(s) => s
            .trim()
            .parse()
            .map_err(|e: T::Err| SidecarError::Invalid { name, message: format!("{s:?}: {e}") }),
    }
}

impl SidecarConfig {
    /// Reads the configuration through `get` (the process environment, or a map in tests).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, SidecarError> {
        let required =
            |name: &'static str| get(name).filter(|v| !v.is_empty()).ok_or(SidecarError::Missing(name));
        let secs = |name: &'static str| -> Result<Option<Duration>, SidecarError> {
            let s: u64 = parse(name, get(name), 0)?;
            Ok((s > 0).then(|| Duration::from_secs(s)))
        };
        let user_port: u16 = parse(env::USER_PORT, get(env::USER_PORT), 8080)?;
        let probe: Option<Probe> =
            match get(env::READINESS_PROBE).filter(|p| !p.trim().is_empty()) {
                None => None,
                Some(text) => Some(serde_json::from_str(&text).map_err(|e| SidecarError::Invalid {
                    name: env::READINESS_PROBE,
                    message: e.to_string(),
                })?),
            };
        let priority_rules = PriorityRule::parse_list(&get(env::PRIORITY_RULES).unwrap_or_default())
            .map_err(|e| SidecarError::Invalid { name: env::PRIORITY_RULES, message: e.to_string() })?;
        let proxy = QueueProxyConfig {
            namespace: required(env::NAMESPACE)?,
            service: required(env::SERVICE)?,
            revision: required(env::REVISION)?,
            instance: required(env::POD)?,
            node: required(env::NODE)?,
            app: SocketAddr::from(([127, 0, 0, 1], user_port)),
            container_concurrency: parse(env::CONTAINER_CONCURRENCY, get(env::CONTAINER_CONCURRENCY), 0)?,
            queue_depth: None,
            queue: get(env::QUEUE).filter(|q| !q.is_empty()).unwrap_or_else(|| "fifo".into()),
            priority_rules,
            timeout: Duration::from_secs(parse(env::TIMEOUT, get(env::TIMEOUT), 300)?),
            response_start_timeout: secs(env::RESPONSE_START_TIMEOUT)?,
            idle_timeout: secs(env::IDLE_TIMEOUT)?,
            readiness: Readiness::from_probe(probe.as_ref()),
            max_header_bytes: ikukantai_dataplane::defaults::MAX_HEADER_BYTES,
            upgrades: ikukantai_dataplane::edge::default_upgrades(),
        };
        Ok(Self {
            proxy,
            port: parse(env::QUEUE_PORT, get(env::QUEUE_PORT), QUEUE_PORT)?,
            admin_port: parse(env::ADMIN_PORT, get(env::ADMIN_PORT), QUEUE_ADMIN_PORT)?,
            controller_url: get(env::CONTROLLER_URL).filter(|u| !u.is_empty()),
            token_file: get(env::TOKEN_FILE).filter(|p| !p.is_empty()).map(Into::into),
            drain_notice: Duration::from_secs(parse(env::DRAIN_NOTICE, get(env::DRAIN_NOTICE), 0)?),
        })
    }
}

/// Whether to push this second's stats: a second without requests is pushed once, then no more
/// until there is load again (the controller counts a revision's seconds without stats as zeros),
/// so idle instances do not load the leader. `was_idle` carries the previous second.
fn worth_pushing(s: &ikukantai_policy::autoscaler::Stat, was_idle: &mut bool) -> bool {
    let idle = s.concurrency == 0.0
        && s.requests == 0.0
        && s.proxied_concurrency == 0.0
        && s.proxied_requests == 0.0;
    let worth = !(idle && *was_idle);
    *was_idle = idle;
    worth
}

/// Runs the sidecar on all interfaces until `shutdown` resolves, then drains.
pub async fn run(config: SidecarConfig, shutdown: impl Future<Output = ()>) -> Result<(), SidecarError> {
    let start = |e: std::io::Error| SidecarError::Start(e.to_string());
    let listener = TcpListener::bind(("0.0.0.0", config.port)).await.map_err(start)?;
    let admin = TcpListener::bind(("0.0.0.0", config.admin_port)).await.map_err(start)?;
    run_on(config, listener, admin, shutdown).await
}

/// Runs the sidecar on the given listeners until `shutdown` resolves, then drains.
pub async fn run_on(
    config: SidecarConfig,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SidecarError> {
    let proxy = config.proxy.clone();
    let handle = QueueProxyHandle::start(proxy.clone(), listener, admin)
        .map_err(|e| SidecarError::Start(ikukantai_http::error::chain(&e)))?;
    tracing::info!(instance = %proxy.instance, addr = %handle.addr(), admin = %handle.admin_addr(), "queue proxy serving");
    let push = config.controller_url.as_deref().map(|url| {
        let pusher = Pusher::new(url);
        match &config.token_file {
            Some(path) => pusher.with_token_file(path),
            None => pusher,
        }
    });
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut was_idle = false;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => {
                let stat = handle.report();
                let worth = worth_pushing(&stat, &mut was_idle);
                if let Some(push) = push.as_ref().filter(|_| worth) {
                    let msg = InstanceStats {
                        namespace: proxy.namespace.clone(),
                        revision: proxy.revision.clone(),
                        instance: proxy.instance.clone(),
                        node: proxy.node.clone(),
                        stat: stat.into(),
                    };
                    // Stats are best effort: a missed second only makes the average coarser.
                    if let Err(e) = push.push(STATS_PATH, &msg).await {
                        tracing::debug!(error = %e, "stats not delivered");
                    }
                }
            }
        }
    }
    tracing::info!(notice = ?config.drain_notice, "draining");
    handle.drain_after(config.drain_notice).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env_map(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    const BASE: &[(&str, &str)] = &[
        (env::NAMESPACE, "demo"),
        (env::SERVICE, "hello"),
        (env::REVISION, "hello-00001"),
        (env::POD, "hello-00001-node3-0"),
        (env::NODE, "node3"),
    ];

    #[test]
    fn reads_what_the_controller_writes() {
        let mut pairs = BASE.to_vec();
        pairs.extend([
            (env::USER_PORT, "9000"),
            (env::CONTAINER_CONCURRENCY, "4"),
            (env::QUEUE, "priority"),
            (env::PRIORITY_RULES, "header:x-priority"),
            (env::TIMEOUT, "30"),
            (env::IDLE_TIMEOUT, "0"),
            (env::READINESS_PROBE, r#"{"httpGet":{"path":"/ready"}}"#),
            (env::CONTROLLER_URL, "http://ctl:9090"),
            (env::TOKEN_FILE, "/var/run/secrets/ikukantai/token"),
            (env::DRAIN_NOTICE, "7"),
        ]);
        let c = SidecarConfig::from_env(env_map(&pairs)).unwrap();
        assert_eq!(c.proxy.app, SocketAddr::from(([127, 0, 0, 1], 9000)));
        assert_eq!(c.proxy.container_concurrency, 4);
        assert_eq!(c.proxy.queue, "priority");
        assert_eq!(c.proxy.priority_rules.len(), 1);
        assert_eq!(c.proxy.timeout, Duration::from_secs(30));
        assert_eq!(c.proxy.idle_timeout, None);
        assert_eq!(c.port, QUEUE_PORT);
        assert_eq!(c.controller_url.as_deref(), Some("http://ctl:9090"));
        assert_eq!(c.token_file.as_deref(), Some(std::path::Path::new("/var/run/secrets/ikukantai/token")));
        assert_eq!(c.drain_notice, Duration::from_secs(7));
        let defaults = SidecarConfig::from_env(env_map(BASE)).unwrap();
        assert_eq!(defaults.drain_notice, Duration::ZERO);
    }

    #[test]
    fn an_idle_instance_pushes_one_zero_then_nothing_until_it_has_load() {
        use ikukantai_policy::autoscaler::Stat;
        let busy = Stat { concurrency: 2.0, requests: 5.0, ..Stat::default() };
        let idle = Stat::default();
        let mut was_idle = false;
        let pushed: Vec<bool> =
            [busy, idle, idle, idle, busy, idle].iter().map(|s| worth_pushing(s, &mut was_idle)).collect();
        assert_eq!(pushed, [true, true, false, false, true, true]);
    }

    #[test]
    fn errors_name_the_variable() {
        let err = SidecarConfig::from_env(env_map(&BASE[1..])).unwrap_err().to_string();
        assert_eq!(err, "environment variable SERVING_NAMESPACE is required");
        let mut pairs = BASE.to_vec();
        pairs.push((env::CONTAINER_CONCURRENCY, "many"));
        let err = SidecarConfig::from_env(env_map(&pairs)).unwrap_err().to_string();
        assert!(err.starts_with("environment variable CONTAINER_CONCURRENCY: \"many\""), "{err}");
    }
}
