//! A fake Kubernetes API server for tower-test: it keeps objects by path and answers the way the
//! real one does where the controller's correctness depends on it:
//!
//! - creates get 409 `AlreadyExists` while the name is in use, including by a Pod still
//!   Terminating; creates set `uid`, `resourceVersion` and `creationTimestamp`;
//! - a Pod that was scheduled and is not terminal is not removed by a delete: it gets a
//!   `deletionTimestamp` and stays Terminating until its kubelet confirms
//!   ([`FakeApi::finish_terminating`]); unscheduled and Failed/Succeeded Pods go at once; objects
//!   with finalizers wait for them to be removed;
//! - merge patches follow RFC 7386 (a map keeps the keys a patch does not mention; `null`
//!   removes one); one that names a `metadata.resourceVersion` other than the stored one gets 409
//!   `Conflict`; status subresources take only `status`, main resources ignore it;
//! - server-side apply tracks which manager owns which fields: fields a manager applied before
//!   and leaves out are removed (unless another manager owns them), and a conflicting field owned
//!   by another manager is a 409 unless forced;
//! - creates are validated (label values, probe ports: 422, [`super::validation`]), and Pod
//!   creates pass admission: the namespace's Pod Security level
//!   (`pod-security.kubernetes.io/enforce`), a ResourceQuota that requires limits and a
//!   LimitRange's CPU limit-to-request ratio;
//! - TokenReviews answer from the tokens the test issued;
//! - a GET of a collection lists it (label selectors apply; metadata-only when the client asks
//!   for `PartialObjectMetadata`); a watch stays open without events; collections the test
//!   [`FakeApi::forbid`]s answer 403, as RBAC does.

#![allow(dead_code, reason = "each test crate uses part of the fake API server")]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::psa::{self, Level};
use super::validation;

/// The controller's clock, driven by hand: monotonic and wall time advance together.
#[derive(Debug)]
pub struct ManualClock(Mutex<(Instant, Timestamp)>);

impl ManualClock {
    pub fn new() -> Self {
        Self(Mutex::new((Instant::now(), "2030-01-01T00:00:00Z".parse().unwrap())))
    }

    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap();
        t.0 += d;
        t.1 += d;
    }

    pub fn wall_now(&self) -> Timestamp {
        self.0.lock().unwrap().1
    }

    /// RFC 3339 at whole seconds, as Kubernetes writes times.
    pub fn rfc3339(&self) -> String {
        let t = self.wall_now();
        Timestamp::from_second(t.as_second()).unwrap().to_string()
    }
}

impl ikukantai_kube::controller::Clock for ManualClock {
    fn now(&self) -> Instant {
        self.0.lock().unwrap().0
    }

    fn wall(&self) -> Timestamp {
        self.wall_now()
    }
}

/// One request as the client sent it.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    /// The `Accept` header: metadata-only requests ask for `as=PartialObjectMetadata(List)`.
    pub accept: String,
    pub body: Value,
}

impl Call {
    pub fn is(&self, method: &Method, path: &str) -> bool {
        self.method == method && self.path == path
    }

    /// A watch (`?watch=true`): the server keeps it open.
    pub fn is_watch(&self) -> bool {
        self.param("watch").is_some_and(|w| w == "true" || w == "1")
    }

    fn param(&self, key: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| percent_decode(v))
        })
    }
}

fn percent_decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(x) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(x);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// A field path inside an object.
type FieldPath = Vec<String>;

/// What a namespace's admission enforces.
#[derive(Debug, Clone, Default)]
pub struct NamespacePolicy {
    /// `pod-security.kubernetes.io/enforce`.
    pub pod_security: Option<Level>,
    /// A ResourceQuota over `limits.*` for these resources (`cpu`, `memory`): every container
    /// must then set those limits.
    pub quota_limits: Vec<&'static str>,
    /// A LimitRange's `maxLimitRequestRatio` for CPU: no container's CPU limit may exceed its
    /// request by more.
    pub cpu_limit_request_ratio: Option<u32>,
}

/// The fake API server's state.
#[derive(Debug)]
pub struct FakeApi {
    pub clock: Arc<ManualClock>,
    objects: Mutex<BTreeMap<String, Value>>,
    /// Object path → manager → fields it owns.
    owners: Mutex<HashMap<String, BTreeMap<String, BTreeSet<FieldPath>>>>,
    policies: Mutex<HashMap<String, NamespacePolicy>>,
    /// Token → the `status.user` a TokenReview returns for it, and the audiences it was issued for.
    tokens: Mutex<HashMap<String, (Value, Vec<String>)>>,
    version: AtomicU64,
    /// Collections whose list and watch RBAC forbids.
    forbidden: Mutex<BTreeSet<String>>,
    pub calls: Mutex<Vec<Call>>,
}

pub fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": reason, "code": code, "message": message}),
    )
}

/// `/api/v1/namespaces/NS/pods/NAME` → (`pods`, `NAME`, `NS`).
fn parts(path: &str) -> (String, String, Option<String>) {
    let segs: Vec<&str> = path.trim_end_matches("/status").split('/').collect();
    let ns =
        segs.iter().position(|s| *s == "namespaces").and_then(|i| segs.get(i + 1)).map(|s| s.to_string());
    let n = segs.len();
    (segs[n.saturating_sub(2)].to_owned(), segs[n - 1].to_owned(), ns)
}

/// A uid unique to the object's kind and name.
fn uid(path: &str) -> String {
    let (kind, name, _) = parts(path);
    format!("uid-{kind}-{name}")
}

/// Whether `path` names a collection (`/api/v1/nodes`, `/apis/G/V/namespaces/NS/R`), not an object.
fn is_collection(path: &str) -> bool {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let base = if segs.first() == Some(&"api") { 2 } else { 3 };
    segs.len() > base && (segs.len() - base) % 2 == 1
}

fn kind_of(path: &str) -> String {
    parts(path).0
}

impl FakeApi {
    pub fn new(clock: Arc<ManualClock>) -> Arc<Self> {
        Arc::new(Self {
            clock,
            objects: Mutex::default(),
            owners: Mutex::default(),
            policies: Mutex::default(),
            tokens: Mutex::default(),
            version: AtomicU64::new(1),
            forbidden: Mutex::default(),
            calls: Mutex::default(),
        })
    }

    fn next_version(&self) -> String {
        self.version.fetch_add(1, Ordering::Relaxed).to_string()
    }

    /// Every object, by path.
    pub fn objects(&self) -> BTreeMap<String, Value> {
        self.objects.lock().unwrap().clone()
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.objects.lock().unwrap().get(path).cloned()
    }

    /// Stores `obj` at `path` as if someone else had created it.
    pub fn put(&self, path: &str, mut obj: Value) {
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(uid(path));
        }
        if obj["metadata"]["creationTimestamp"].is_null() {
            obj["metadata"]["creationTimestamp"] = json!(self.clock.rfc3339());
        }
        self.objects.lock().unwrap().insert(path.to_owned(), obj);
    }

    /// Changes a stored object in place (a kubelet, a scheduler, another controller).
    pub fn update(&self, path: &str, f: impl FnOnce(&mut Value)) {
        let mut objects = self.objects.lock().unwrap();
        f(objects.get_mut(path).unwrap_or_else(|| panic!("no object at {path}")));
    }

    /// Changes every stored object under `prefix`.
    pub fn update_all(&self, prefix: &str, mut f: impl FnMut(&str, &mut Value)) {
        for (k, v) in self.objects.lock().unwrap().iter_mut().filter(|(k, _)| k.starts_with(prefix)) {
            f(k, v);
        }
    }

    /// Lists and watches of the collection at `path` get 403, as RBAC answers.
    pub fn forbid(&self, path: &str) {
        self.forbidden.lock().unwrap().insert(path.to_owned());
    }

    pub fn set_policy(&self, namespace: &str, policy: NamespacePolicy) {
        self.policies.lock().unwrap().insert(namespace.to_owned(), policy);
    }

    /// A token for the controller's audience whose TokenReview answers `user`.
    pub fn issue_token(&self, token: &str, user: Value) {
        self.issue_token_for(token, user, &[ikukantai_kube::auth::AUDIENCE]);
    }

    /// A token issued for `audiences` (a Pod's default token is for the API server's).
    pub fn issue_token_for(&self, token: &str, user: Value, audiences: &[&str]) {
        let audiences = audiences.iter().map(|a| a.to_string()).collect();
        self.tokens.lock().unwrap().insert(token.to_owned(), (user, audiences));
    }

    /// Deletes the object at `path` as a client's DELETE would (graceful for Pods, waiting for
    /// finalizers); `false` if there was none.
    pub fn delete_object(&self, path: &str) -> bool {
        self.delete(path).is_ok()
    }

    /// The garbage collector: deletes every object whose controller owner is gone, until none
    /// is left (background propagation: a Service's Placements, then their Pods).
    pub fn garbage_collect(&self) {
        loop {
            let objects = self.objects();
            let uids: BTreeSet<&str> =
                objects.values().filter_map(|o| o["metadata"]["uid"].as_str()).collect();
            let orphans: Vec<String> = objects
                .iter()
                .filter(|(_, o)| o["metadata"]["deletionTimestamp"].is_null())
                .filter(|(_, o)| {
                    o["metadata"]["ownerReferences"].as_array().is_some_and(|refs| {
                        refs.iter().any(|r| !uids.contains(r["uid"].as_str().unwrap_or_default()))
                    })
                })
                .map(|(k, _)| k.clone())
                .collect();
            if orphans.is_empty() {
                return;
            }
            for k in orphans {
                let _ = self.delete(&k);
            }
        }
    }

    /// The kubelets confirm every Terminating Pod's end: they go.
    pub fn finish_terminating(&self) {
        self.objects
            .lock()
            .unwrap()
            .retain(|k, v| kind_of(k) != "pods" || v["metadata"]["deletionTimestamp"].is_null());
    }

    /// Answers one request.
    pub fn answer(&self, call: &Call) -> (u16, Value) {
        let path = call.path.as_str();
        let on_status = path.ends_with("/status");
        let key = path.trim_end_matches("/status").to_owned();
        match call.method {
            Method::GET if self.forbidden.lock().unwrap().contains(&key) => status(
                403,
                "Forbidden",
                &format!("{} is forbidden: cannot list resource {:?}", parts(&key).1, parts(&key).1),
            ),
            Method::GET if is_collection(&key) => self.list(call, &key),
            Method::GET => match self.get(&key) {
                Some(obj) => (200, obj),
                None => status(404, "NotFound", &format!("{} {:?} not found", kind_of(&key), parts(&key).1)),
            },
            Method::POST if path == "/apis/authentication.k8s.io/v1/tokenreviews" => self.token_review(call),
            Method::POST => self.create(call),
            Method::PATCH if call.content_type.contains("apply-patch") => self.apply(call, &key, on_status),
            Method::PATCH if call.content_type.contains("merge-patch") => {
                self.merge_patch(call, &key, on_status)
            }
            Method::PATCH if call.content_type.contains("json-patch") => self.json_patch(call, &key),
            Method::DELETE if call.param("labelSelector").is_some() => {
                let selector = call.param("labelSelector").unwrap();
                let prefix = format!("{path}/");
                let matching: Vec<String> = self
                    .objects
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(k, v)| {
                        k.starts_with(&prefix) && !k[prefix.len()..].contains('/') && selects(&selector, v)
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                let items: Vec<Value> = matching.iter().filter_map(|k| self.delete(k).ok()).collect();
                (200, json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}))
            }
            Method::DELETE => match self.delete(&key) {
                Ok(obj) => (200, obj),
                Err(e) => e,
            },
            _ => panic!("unexpected call {call:?}"),
        }
    }

    /// The objects directly under `key` that the label selector selects; only their metadata
    /// when the client asked for `PartialObjectMetadataList`.
    fn list(&self, call: &Call, key: &str) -> (u16, Value) {
        let prefix = format!("{key}/");
        let selector = call.param("labelSelector");
        let metadata_only = call.accept.contains("as=PartialObjectMetadata");
        let items: Vec<Value> = self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, v)| {
                k.starts_with(&prefix)
                    && !k[prefix.len()..].contains('/')
                    && selector.as_ref().is_none_or(|s| selects(s, v))
            })
            .map(|(_, v)| {
                if metadata_only {
                    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": v["metadata"]})
                } else {
                    v.clone()
                }
            })
            .collect();
        let version = self.version.load(Ordering::Relaxed).to_string();
        let (api_version, kind) =
            if metadata_only { ("meta.k8s.io/v1", "PartialObjectMetadataList") } else { ("v1", "List") };
        (
            200,
            json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": version}, "items": items}),
        )
    }

    fn create(&self, call: &Call) -> (u16, Value) {
        let mut obj = call.body.clone();
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let key = format!("{}/{name}", call.path);
        let (kind, _, ns) = parts(&key);
        let invalid = validation::labels(&obj);
        if !invalid.is_empty() {
            let what = kind.trim_end_matches('s');
            return status(422, "Invalid", &format!("{what} {name:?} is invalid: {}", invalid.join(", ")));
        }
        if kind == "pods"
            && let Err(e) = self.admit_pod(ns.as_deref().unwrap_or("default"), &name, &obj["spec"])
        {
            return e;
        }
        let mut objects = self.objects.lock().unwrap();
        if objects.contains_key(&key) {
            let what = kind.trim_end_matches('s');
            return status(409, "AlreadyExists", &format!("{what}s {name:?} already exists"));
        }
        obj["metadata"]["uid"] = json!(uid(&key));
        obj["metadata"]["resourceVersion"] = json!(self.next_version());
        obj["metadata"]["creationTimestamp"] = json!(self.clock.rfc3339());
        if kind == "pods" {
            obj["status"] = json!({"phase": "Pending"});
        }
        let manager = call.param("fieldManager").unwrap_or_else(|| "kube-rs".into());
        let mut owned = BTreeSet::new();
        leaves(&without_status(&obj), &mut Vec::new(), &mut owned);
        self.owners.lock().unwrap().entry(key.clone()).or_default().insert(manager, owned);
        objects.insert(key, obj.clone());
        (201, obj)
    }

    /// Validation and admission of a Pod create.
    fn admit_pod(&self, namespace: &str, name: &str, spec: &Value) -> Result<(), (u16, Value)> {
        let invalid = validation::probe_ports(spec);
        if !invalid.is_empty() {
            return Err(status(
                422,
                "Invalid",
                &format!("Pod {name:?} is invalid: [{}]", invalid.join(", ")),
            ));
        }
        let policy = self.policies.lock().unwrap().get(namespace).cloned().unwrap_or_default();
        if let Some(level) = policy.pod_security {
            psa::admit(level, name, spec).map_err(|m| status(403, "Forbidden", &m))?;
        }
        if !policy.quota_limits.is_empty() {
            let mut missing = Vec::new();
            for r in &policy.quota_limits {
                let lacking: Vec<String> = spec["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["resources"]["limits"][*r].is_null())
                    .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
                    .collect();
                if !lacking.is_empty() {
                    missing.push(format!("limits.{r} for: {}", lacking.join(",")));
                }
            }
            if !missing.is_empty() {
                return Err(status(
                    403,
                    "Forbidden",
                    &format!(
                        "pods {name:?} is forbidden: failed quota: compute: must specify {}",
                        missing.join("; ")
                    ),
                ));
            }
        }
        if let Some(max) = policy.cpu_limit_request_ratio {
            for c in spec["containers"].as_array().into_iter().flatten() {
                let cpu = |k: &str| c["resources"][k]["cpu"].as_str().map(validation::millicores);
                if let (Some(limit), Some(request)) = (cpu("limits"), cpu("requests")) {
                    let ratio = limit / request;
                    if ratio > f64::from(max) {
                        return Err(status(
                            403,
                            "Forbidden",
                            &format!(
                                "pods {name:?} is forbidden: cpu max limit to request ratio per Container is {max}, but provided ratio is {ratio:.6}"
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<Value, (u16, Value)> {
        let mut objects = self.objects.lock().unwrap();
        let Some(obj) = objects.get_mut(key) else {
            return Err(status(404, "NotFound", &format!("{:?} not found", parts(key).1)));
        };
        let finalizers = obj["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        // A Pod on a node terminates gracefully (its kubelet confirms); one never scheduled, or
        // already Failed/Succeeded, goes at once.
        let phase = obj["status"]["phase"].as_str().unwrap_or_default();
        let graceful = kind_of(key) == "pods"
            && obj["spec"]["nodeName"].is_string()
            && !matches!(phase, "Failed" | "Succeeded");
        if finalizers || graceful {
            if obj["metadata"]["deletionTimestamp"].is_null() {
                obj["metadata"]["deletionTimestamp"] = json!(self.clock.rfc3339());
                if graceful {
                    obj["metadata"]["deletionGracePeriodSeconds"] =
                        obj["spec"]["terminationGracePeriodSeconds"].clone();
                }
            }
            return Ok(obj.clone());
        }
        let obj = objects.remove(key).unwrap();
        self.owners.lock().unwrap().remove(key);
        Ok(obj)
    }

    fn merge_patch(&self, call: &Call, key: &str, on_status: bool) -> (u16, Value) {
        let mut objects = self.objects.lock().unwrap();
        let Some(obj) = objects.get_mut(key) else {
            return status(404, "NotFound", &format!("{:?} not found", parts(key).1));
        };
        // Optimistic concurrency: a patch that names the version it was computed from applies
        // only to that version.
        let expected = call.body["metadata"]["resourceVersion"].as_str();
        if expected.is_some() && obj["metadata"]["resourceVersion"].as_str() != expected {
            let msg = format!(
                "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your changes to the latest version and try again",
                kind_of(key),
                parts(key).1
            );
            return status(409, "Conflict", &msg);
        }
        let patch = scope(&call.body, on_status);
        json_patch::merge(obj, &patch);
        obj["metadata"]["resourceVersion"] = json!(self.next_version());
        let manager = call.param("fieldManager").unwrap_or_else(|| "kube-rs".into());
        let mut touched = BTreeSet::new();
        leaves(&patch, &mut Vec::new(), &mut touched);
        let mut owners = self.owners.lock().unwrap();
        let fields = owners.entry(key.to_owned()).or_default();
        for set in fields.values_mut() {
            set.retain(|p| !touched.iter().any(|t| p.starts_with(t)));
        }
        fields.entry(manager).or_default().extend(touched.into_iter().filter(|p| get_path(obj, p).is_some()));
        let out = obj.clone();
        drop(objects);
        self.finish_if_finalized(key);
        (200, out)
    }

    fn json_patch(&self, call: &Call, key: &str) -> (u16, Value) {
        let mut objects = self.objects.lock().unwrap();
        let Some(obj) = objects.get_mut(key) else {
            return status(404, "NotFound", &format!("{:?} not found", parts(key).1));
        };
        for op in call.body.as_array().into_iter().flatten() {
            let path: Vec<String> = op["path"]
                .as_str()
                .unwrap_or_default()
                .split('/')
                .skip(1)
                .map(|s| s.replace("~1", "/").replace("~0", "~"))
                .collect();
            match op["op"].as_str() {
                Some("test") => {
                    if get_path(obj, &path) != Some(&op["value"]) {
                        return status(422, "Invalid", "the test operation failed");
                    }
                }
                Some("remove") => {
                    remove_path(obj, &path);
                }
                Some("add" | "replace") => set_path(obj, &path, op["value"].clone()),
                other => panic!("json patch op {other:?}"),
            }
        }
        obj["metadata"]["resourceVersion"] = json!(self.next_version());
        let out = obj.clone();
        drop(objects);
        self.finish_if_finalized(key);
        (200, out)
    }

    /// A deleted object whose last finalizer went is removed.
    fn finish_if_finalized(&self, key: &str) {
        let mut objects = self.objects.lock().unwrap();
        let done = objects.get(key).is_some_and(|o| {
            !o["metadata"]["deletionTimestamp"].is_null()
                && o["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty())
                && kind_of(key) != "pods"
        });
        if done {
            objects.remove(key);
        }
    }

    fn apply(&self, call: &Call, key: &str, on_status: bool) -> (u16, Value) {
        let manager = call.param("fieldManager").expect("server-side apply names its field manager");
        let force = call.param("force").as_deref() == Some("true");
        let body = scope(&call.body, on_status);
        let mut applied = BTreeSet::new();
        leaves(&body, &mut Vec::new(), &mut applied);
        applied.retain(|p| !is_identity(p));
        let mut objects = self.objects.lock().unwrap();
        let mut owners = self.owners.lock().unwrap();
        let fields = owners.entry(key.to_owned()).or_default();
        let exists = objects.contains_key(key);
        if on_status && !exists {
            return status(404, "NotFound", &format!("{:?} not found", parts(key).1));
        }
        let obj = objects.entry(key.to_owned()).or_insert_with(|| {
            let (_, name, _) = parts(key);
            let mut o = json!({"metadata": {"name": name, "uid": uid(key),
                                            "creationTimestamp": self.clock.rfc3339()}});
            if let Some(ns) = parts(key).2 {
                o["metadata"]["namespace"] = json!(ns);
            }
            o
        });
        // Conflicts: a field another manager owns, with a different value.
        let mut conflicts = Vec::new();
        for (m, set) in fields.iter_mut().filter(|(m, _)| **m != manager) {
            let theirs: Vec<FieldPath> = set
                .iter()
                .filter(|p| applied.contains(*p) && get_path(obj, p) != get_path(&body, p))
                .cloned()
                .collect();
            for p in theirs {
                if force {
                    set.remove(&p);
                } else {
                    conflicts.push(format!("conflict with {m:?}: .{}", p.join(".")));
                }
            }
        }
        if !conflicts.is_empty() {
            return status(
                409,
                "Conflict",
                &format!("Apply failed with {} conflict(s): {}", conflicts.len(), conflicts.join(", ")),
            );
        }
        // Fields this manager applied before (in this scope) and leaves out now go, unless
        // another manager owns them too.
        let before: BTreeSet<FieldPath> = fields
            .get(&manager)
            .map(|s| {
                s.iter()
                    .filter(|p| (p.first().map(String::as_str) == Some("status")) == on_status)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for p in before.difference(&applied) {
            let shared = fields.iter().any(|(m, s)| *m != manager && s.iter().any(|q| q.starts_with(p)));
            if !shared {
                remove_path(obj, p);
            }
        }
        // Maps merge key by key, lists and scalars are replaced (atomic lists, as CRDs' are).
        json_patch::merge(obj, &body);
        obj["metadata"]["resourceVersion"] = json!(self.next_version());
        let mine = fields.entry(manager).or_default();
        mine.retain(|p| (p.first().map(String::as_str) == Some("status")) != on_status);
        mine.extend(applied);
        (200, obj.clone())
    }

    fn token_review(&self, call: &Call) -> (u16, Value) {
        let token = call.body["spec"]["token"].as_str().unwrap_or_default();
        let audiences = call.body["spec"]["audiences"].clone();
        // A token is good for the audiences asked for only if it was issued for one of them.
        let asked: Vec<String> = audiences
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        let status = match self.tokens.lock().unwrap().get(token) {
            Some((user, issued)) => {
                let shared: Vec<&String> =
                    issued.iter().filter(|a| asked.is_empty() || asked.contains(a)).collect();
                if shared.is_empty() {
                    json!({"authenticated": false, "error": "[invalid bearer token, token audiences are invalid for the target audiences]"})
                } else {
                    json!({"authenticated": true, "user": user, "audiences": shared})
                }
            }
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        (
            201,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                     "metadata": {}, "spec": call.body["spec"], "status": status}),
        )
    }
}

/// `metadata.name` and friends identify the object; nobody owns them.
fn is_identity(p: &FieldPath) -> bool {
    let s: Vec<&str> = p.iter().map(String::as_str).collect();
    matches!(s.as_slice(), ["apiVersion"] | ["kind"] | ["metadata", "name"] | ["metadata", "namespace"])
}

/// A status subresource takes only `status`; the main resource ignores it.
fn scope(body: &Value, on_status: bool) -> Value {
    if on_status { json!({"status": body["status"].clone()}) } else { without_status(body) }
}

fn without_status(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    v
}

/// The leaf fields of `v`: scalars, lists (owned whole) and empty maps.
fn leaves(v: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, x) in o {
                prefix.push(k.clone());
                leaves(x, prefix, out);
                prefix.pop();
            }
        }
        Value::Null => {}
        _ => {
            out.insert(prefix.clone());
        }
    }
}

fn get_path<'a>(v: &'a Value, p: &[String]) -> Option<&'a Value> {
    p.iter().try_fold(v, |v, k| match v {
        Value::Array(a) => a.get(k.parse::<usize>().ok()?),
        _ => v.get(k),
    })
}

fn set_path(v: &mut Value, p: &[String], x: Value) {
    let Some((last, init)) = p.split_last() else { return };
    let mut cur = v;
    for k in init {
        cur = &mut cur[k.as_str()];
    }
    match cur {
        Value::Array(a) if last == "-" => a.push(x),
        Value::Array(a) => {
            let i: usize = last.parse().unwrap();
            a.insert(i.min(a.len()), x);
        }
        _ => cur[last.as_str()] = x,
    }
}

/// Removes the field at `p` and the maps it leaves empty.
fn remove_path(v: &mut Value, p: &[String]) {
    let Some((first, rest)) = p.split_first() else { return };
    match v {
        Value::Object(o) => {
            if rest.is_empty() {
                o.remove(first);
            } else if let Some(child) = o.get_mut(first) {
                remove_path(child, rest);
                if child.as_object().is_some_and(|c| c.is_empty()) {
                    o.remove(first);
                }
            }
        }
        Value::Array(a) => {
            if let Ok(i) = first.parse::<usize>() {
                if rest.is_empty() {
                    if i < a.len() {
                        a.remove(i);
                    }
                } else if let Some(child) = a.get_mut(i) {
                    remove_path(child, rest);
                }
            }
        }
        _ => {}
    }
}

/// An equality-based label selector (`a=b,c=d`) matches `obj`'s labels.
pub fn selects(selector: &str, obj: &Value) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        obj["metadata"]["labels"][k].as_str() == Some(v.trim_start_matches('='))
    })
}
