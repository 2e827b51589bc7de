//! Who pushes to the controller. Queue proxies and gateways send a service-account token the
//! kubelet projects into their container for the controller's audience only (bound to their
//! Pod, rotated by the kubelet); the controller asks the API server who it belongs to
//! (TokenReview) and remembers the answer for a while. An instance may then report only its own
//! stats; only gateways may report load, RTTs and demand, each for its own node.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::Semaphore;

/// The audience of the tokens pushers send: a token projected for it is good for nothing else
/// (not the API server), and no other token is accepted here.
pub const AUDIENCE: &str = "ikukantai-controller";
/// Where the sidecar's and the gateway's projected token is mounted.
pub const TOKEN_DIR: &str = "/var/run/secrets/ikukantai";
/// The token file in [`TOKEN_DIR`].
pub const TOKEN_FILE: &str = "/var/run/secrets/ikukantai/token";
/// How long a projected token lives (the kubelet renews it at 80 %).
pub const TOKEN_SECONDS: i64 = 3600;

/// `user.extra` keys a bound service-account token carries.
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const NODE_NAME: &str = "authentication.kubernetes.io/node-name";

/// How long an answer is remembered: accepted tokens for 5 min (they live an hour), refused ones
/// for 10 s (a token the kubelet just wrote is not refused for long).
const ACCEPTED_FOR: Duration = Duration::from_secs(300);
const REFUSED_FOR: Duration = Duration::from_secs(10);
/// At most this many answers are remembered (a few per pusher).
const REMEMBERED: usize = 20_000;
/// TokenReviews in flight at once: a flood of made-up tokens waits here, not on the API server.
const REVIEWS_AT_ONCE: usize = 16;

/// Whom a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The service account's namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
    /// The Pod the token is bound to.
    pub pod: Option<String>,
    /// The node of that Pod.
    pub node: Option<String>,
}

/// A push could not be authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token, or the API server does not know it (for this audience).
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// The API server could not be asked.
    #[error("cannot review the token: {0}")]
    Unavailable(String),
}

/// Tells who a token belongs to.
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    /// The token's identity.
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Identity, AuthError>> + Send + 'a>>;
}

/// The identity of a TokenReview's `status`, if it authenticated a service account's token.
pub fn identity(review: &TokenReview) -> Result<Identity, AuthError> {
    let status = review.status.as_ref().ok_or_else(|| AuthError::Unavailable("no status".into()))?;
    if status.authenticated != Some(true) {
        return Err(AuthError::Unauthenticated(
            status.error.clone().unwrap_or_else(|| "unknown token".into()),
        ));
    }
    if !status.audiences.iter().flatten().any(|a| a == AUDIENCE) {
        return Err(AuthError::Unauthenticated(format!("not a token for {AUDIENCE}")));
    }
    let user = status.user.as_ref().ok_or_else(|| AuthError::Unauthenticated("no user".into()))?;
    let username = user.username.as_deref().unwrap_or_default();
    let Some([namespace, service_account]) = username
        .strip_prefix("system:serviceaccount:")
        .map(|rest| rest.splitn(2, ':').collect::<Vec<_>>())
        .and_then(|v| <[&str; 2]>::try_from(v).ok())
    else {
        return Err(AuthError::Unauthenticated(format!("{username:?} is not a service account")));
    };
    let extra = |key: &str| user.extra.as_ref()?.get(key)?.first().cloned();
    Ok(Identity {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod: extra(POD_NAME),
        node: extra(NODE_NAME),
    })
}

/// An answer about a token, and until when it holds.
type Answer = (Result<Identity, AuthError>, Instant);

/// Reviews tokens with the API server, remembering the answers.
#[derive(Debug)]
pub struct TokenReviewer {
    api: Api<TokenReview>,
    answers: Mutex<HashMap<String, Answer>>,
    in_flight: Semaphore,
}

impl TokenReviewer {
    /// A reviewer asking through `client`.
    pub fn new(client: Client) -> Self {
        Self { api: Api::all(client), answers: Mutex::default(), in_flight: Semaphore::new(REVIEWS_AT_ONCE) }
    }

    fn remembered(&self, token: &str, now: Instant) -> Option<Result<Identity, AuthError>> {
        let answers = self.answers.lock();
        answers.get(token).filter(|(_, until)| *until > now).map(|(a, _)| a.clone())
    }

    async fn review(&self, token: &str) -> Result<Identity, AuthError> {
        if let Some(a) = self.remembered(token, Instant::now()) {
            return a;
        }
        let _permit = self.in_flight.acquire().await.map_err(|e| AuthError::Unavailable(e.to_string()))?;
        // Another push with the same token may have asked meanwhile.
        if let Some(a) = self.remembered(token, Instant::now()) {
            return a;
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_owned()), audiences: Some(vec![AUDIENCE.into()]) },
            ..TokenReview::default()
        };
        let answer = match self.api.create(&PostParams::default(), &review).await {
            Ok(r) => identity(&r),
            // Not remembered: the next push asks again.
            Err(e) => return Err(AuthError::Unavailable(e.to_string())),
        };
        let keep = if answer.is_ok() { ACCEPTED_FOR } else { REFUSED_FOR };
        let now = Instant::now();
        let mut answers = self.answers.lock();
        if answers.len() >= REMEMBERED {
            answers.retain(|_, (_, until)| *until > now);
            if answers.len() >= REMEMBERED {
                answers.clear();
            }
        }
        answers.insert(token.to_owned(), (answer.clone(), now + keep));
        answer
    }
}

impl Authenticator for TokenReviewer {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Identity, AuthError>> + Send + 'a>> {
        Box::pin(self.review(token))
    }
}

/// The token to send, read from the projected file each time (the kubelet replaces it before it
/// expires); `None` without one.
pub fn read_token(path: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
}
