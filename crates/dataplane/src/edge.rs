//! What the gateway believes of a client, and what it lets through: the protocols a request may
//! switch to, the proxies whose forwarding headers it trusts, whether its own response headers
//! reach clients, and how long a quiet tunnel stays open. The queue proxy shares the upgrade
//! allow-list and the Host guard.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, header};
use ikukantai_http::pool::UpstreamError;
use ikukantai_http::upgrade::{OnUpgrade, strip_request};

/// Protocols a request may switch to unless configured otherwise.
pub const DEFAULT_UPGRADES: &[&str] = &["websocket"];

/// How long a tunnel at the gateway may carry no byte before it is cut, unless configured
/// otherwise: Envoy's default `stream_idle_timeout` (5 min), which also bounds its upgraded
/// streams; nginx cuts a WebSocket after 60 s without data from the instance.
pub const DEFAULT_TUNNEL_IDLE: Duration = Duration::from_secs(300);

/// The gateway's policy towards its clients (docs/dataplane.md, "Clients").
#[derive(Debug, Clone, PartialEq)]
pub struct EdgePolicy {
    /// Protocols a request may ask to switch to (`Upgrade`, compared without case and version);
    /// a request asking for any other is served as a plain request, its `Upgrade` dropped (RFC
    /// 9110 §7.8 lets a server ignore it). Default: `websocket`.
    pub upgrades: Vec<String>,
    /// Peers whose `Forwarded`, `X-Forwarded-*` and `X-Real-IP` are kept (a load balancer in
    /// front). From anyone else they are removed and `X-Forwarded-For` / `-Proto` set from what
    /// the gateway saw. Default: none.
    pub trusted_proxies: Vec<Cidr>,
    /// Pass the `x-ikukantai-*` response headers (serving instance, node, load, service time) on
    /// to clients; the gateway reads them either way. Default: off.
    pub internal_headers: bool,
    /// Cut a tunnel (WebSocket) after this long without a byte either way; `None`: never.
    /// Default: [`DEFAULT_TUNNEL_IDLE`].
    pub tunnel_idle_timeout: Option<Duration>,
}

impl Default for EdgePolicy {
    fn default() -> Self {
        Self {
            upgrades: default_upgrades(),
            trusted_proxies: Vec::new(),
            internal_headers: false,
            tunnel_idle_timeout: Some(DEFAULT_TUNNEL_IDLE),
        }
    }
}

impl EdgePolicy {
    /// Whether `ip`'s forwarding headers are believed.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        !self.trusted_proxies.is_empty() && self.trusted_proxies.iter().any(|c| c.contains(ip))
    }
}

/// [`DEFAULT_UPGRADES`], owned.
pub fn default_upgrades() -> Vec<String> {
    DEFAULT_UPGRADES.iter().map(|p| (*p).to_owned()).collect()
}

/// Whether every protocol an `Upgrade` value lists (`name[/version]`, comma-separated) is in
/// `allowed`: a server may pick any listed one, so one not allowed spoils the request's ask.
pub fn upgrade_allowed(allowed: &[String], value: &HeaderValue) -> bool {
    let Ok(value) = value.to_str() else { return false };
    let mut any = false;
    for protocol in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let name = protocol.split_once('/').map_or(protocol, |(name, _)| name).trim();
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
            return false;
        }
        any = true;
    }
    any
}

/// [`strip_request`], for a proxy at the edge: a request asking to switch to a protocol not in
/// `allowed` is served as a plain request (its `Upgrade` goes with the other hop-by-hop
/// headers). (`Host` stays even when the client lists it in `Connection`: the engine never strips
/// it.)
pub(crate) fn strip_at_edge(parts: &mut http::request::Parts, allowed: &[String]) -> Option<OnUpgrade> {
    if parts.extensions.get::<OnUpgrade>().is_some()
        && !parts.headers.get(header::UPGRADE).is_some_and(|v| upgrade_allowed(allowed, v))
    {
        // Dropped, the client's side learns the connection does not switch.
        parts.extensions.remove::<OnUpgrade>();
    }
    strip_request(parts)
}

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`; a bare address is a network of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the network (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let addr: IpAddr =
            addr.trim().parse().map_err(|_| format!("{s:?} is not an IP address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The `X-Forwarded-For` a trusted proxy's request goes on with: the values it carries, in one
/// field, with `ip` appended (one list: readers that take the first field line see it whole);
/// just `ip` when it carries none.
pub(crate) fn forwarded_for(headers: &HeaderMap, ip: &HeaderValue) -> HeaderValue {
    let mut values = headers.get_all(&crate::headers::X_FORWARDED_FOR).iter().peekable();
    if values.peek().is_none() {
        return ip.clone();
    }
    let mut joined = Vec::with_capacity(64);
    for v in values {
        joined.extend_from_slice(v.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(ip.as_bytes());
    // Made of valid values, commas and spaces: valid.
    HeaderValue::from_bytes(&joined).unwrap_or_else(|_| ip.clone())
}

/// Whether an upstream exchange failed on the client's request body (bad framing, cut short)
/// rather than on the instance.
pub(crate) fn client_body_failed(e: &UpstreamError) -> bool {
    matches!(e, UpstreamError::RequestBody { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrades_are_allowed_only_when_every_listed_protocol_is() {
        let allowed = default_upgrades();
        let ok = |v: &'static str| upgrade_allowed(&allowed, &HeaderValue::from_static(v));
        assert!(ok("websocket") && ok("WebSocket") && ok(" websocket/13 "));
        assert!(!ok("h2c") && !ok("websocket, h2c") && !ok("") && !ok(",") && !ok("echo"));
    }

    #[test]
    fn networks_contain_their_addresses() {
        let net = |s: &str| s.parse::<Cidr>().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(net("10.0.0.0/8").contains(ip("10.200.3.4")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("127.0.0.1").contains(ip("127.0.0.1")) && !net("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.7")));
        assert!(net("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        assert!(
            net("2001:db8::/32").contains(ip("2001:db8::1")) && !net("2001:db8::/32").contains(ip("::1"))
        );
        assert!(!net("::/0").contains(ip("10.0.0.1")), "families do not mix");
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(net("10.1.0.0/16").to_string(), "10.1.0.0/16");
    }

    #[test]
    fn forwarded_for_appends_to_the_last_value_in_one_field() {
        let ip = HeaderValue::from_static("203.0.113.7");
        let mut h = HeaderMap::new();
        assert_eq!(forwarded_for(&h, &ip), "203.0.113.7");
        h.append("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1, 10.0.0.2"));
        assert_eq!(forwarded_for(&h, &ip), "6.6.6.6, 10.0.0.1, 10.0.0.2, 203.0.113.7");
    }
}
