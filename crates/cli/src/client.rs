//! A small client for the fleet API.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ikukantai_fleet::view::ErrorBody;
use serde::de::DeserializeOwned;

pub(crate) struct Api {
    base: String,
    token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    pub(crate) fn new(addr: &str, token: Option<String>) -> Self {
        let base = if addr.starts_with("http://") {
            addr.trim_end_matches('/').to_owned()
        } else {
            format!("http://{addr}")
        };
        Self { base, token, client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()) }
    }

    pub(crate) async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut req = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let resp = match tokio::time::timeout(Duration::from_secs(30), self.client.request(req)).await {
            Err(_) => bail!("the fleet at {} did not answer within 30s", self.base),
            Ok(Err(e)) if e.is_connect() => {
                bail!(
                    "no fleet at {} — start one with `ikukantai up`",
                    self.base.trim_start_matches("http://")
                )
            }
            Ok(Err(e)) => return Err(e).with_context(|| format!("request to {} failed", self.base)),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<T> {
        let (status, bytes) = self.raw(method, path, body).await?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            bail!("{message}");
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("unexpected answer from the fleet at {}", self.base))
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(Method::GET, path, None).await
    }
}
