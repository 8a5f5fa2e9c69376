//! A stand-in for the Kubernetes API server: the list and watch of Namespaces, Pods,
//! NetworkPolicies, ClusterNetworkPolicies and Nodes, and the merge patch of a Node, served
//! over HTTP/1.1 (plain or HTTPS) from objects the test holds, so the real client (kube's reflector and watcher, a
//! daemon publishing on its Node) can run against it where no API server can.
//!
//! What it serves, as the real server does:
//! - `GET /api/v1/namespaces`, `/api/v1/nodes`, `/api/v1/pods`,
//!   `/api/v1/namespaces/{ns}/pods`, `/apis/networking.k8s.io/v1/networkpolicies` and
//!   `/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies`,
//!   `/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies` (404 while
//!   [`KubeApi::set_cnp_served`] says its CRD is absent): a `…List` whose
//!   `metadata.resourceVersion` is the current one (`resourceVersion` of a list is ignored:
//!   the list is always current). `limit=N` pages it as the real server does: at most N
//!   items and a `metadata.continue` token while more remain; the next page (`continue=`)
//!   goes on after the last key served, and carries the first page's resourceVersion. The
//!   pages are read from the current objects, not from a snapshot: a change between pages
//!   may show in a later page, and the watch from that version replays it anyway. A token
//!   older than [`KubeApi::expire_before`] gets 410 `Expired`, a garbled one 400.
//! - the same with `watch=true|1`: a chunked stream of `{"type","object"}` lines from
//!   `resourceVersion` on (absent or `0`: ADDED for every object first), `BOOKMARK`s every
//!   bookmark interval with `allowWatchBookmarks=true`, ending after `timeoutSeconds`. A
//!   version older than [`KubeApi::expire_before`] gets an `ERROR` event carrying a `Status`
//!   with code 410, reason `Expired`, as the real server sends for a compacted version.
//! - `fieldSelector` on `spec.nodeName`, `metadata.name`, `metadata.namespace` (`=`, `==`,
//!   `!=`), `labelSelector` with `k=v`, `k==v`, `k!=v`, `k`, `!k`; anything else is a 400,
//!   never silently ignored. A watch with a selector sees an object leave it as DELETED and
//!   enter it as ADDED, as the real server reports.
//! - `GET` of one Namespace, Node, Pod or NetworkPolicy by its path: the object, or 404
//!   `NotFound`.
//! - `PATCH /api/v1/nodes/{name}` with `application/merge-patch+json` (RFC 7386: maps merge,
//!   `null` removes a key, anything else replaces) or `application/strategic-merge-patch+json`
//!   (applied as a merge patch: right for maps such as annotations and labels; lists are
//!   replaced whole, and `$patch` directives are not understood). The object keeps its
//!   name, uid and creationTimestamp; a `metadata.resourceVersion` in the patch is a
//!   precondition (409 `Conflict` when stale); a change gets the next resourceVersion and
//!   watches see MODIFIED, while a patch that changes nothing writes nothing, as on the real
//!   server. Another patch type gets 415 `UnsupportedMediaType`, a missing Node 404. Any
//!   other write (`POST`, `PUT`, `DELETE`, `PATCH` of another kind) gets 405: the test
//!   writes through [`KubeApi`]'s methods.
//!
//! The server assigns `metadata.resourceVersion` from one global counter, `uid` and
//! `creationTimestamp`, and labels a Namespace `kubernetes.io/metadata.name`. The test's own
//! writes ([`KubeApi::create`], `update`, `delete`, [`KubeApi::merge_patch`]) need no token
//! and are last writer wins (only a patch's resourceVersion is a precondition).
//!
//! As a cluster serves an in-cluster client, when asked:
//! - HTTPS ([`KubeApi::bind_tls`]) with a CA and certificate of its own ([`KubeApi::ca_pem`]),
//!   valid for the service's names (`kubernetes.default.svc`, ...), loopback and given IPs.
//! - Bearer tokens: once [`KubeApi::service_account_token`] (or [`KubeApi::user_token`]) has
//!   registered one, a request without a registered token gets 401 `Unauthorized`. With none
//!   registered, requests are anonymous (`system:anonymous`) and need no header.
//! - RBAC: once [`KubeApi::set_rbac`] has given roles and bindings, every request is judged
//!   first, as the real authorizer judges it ([`rbac`]), with the bootstrap discovery and
//!   health roles added: a denial gets 403 `Forbidden` worded as the real server words it,
//!   whether or not the stand-in serves what was asked (what it does not serve then gets its
//!   405 or 404 as before).
//!
//! [`KubeApi::requests`] records who asked (`user`) and what they got (`status`), so a test
//! can check that everything a client did was allowed ([`KubeApi::denied_requests`]).

pub mod rbac;
mod tls;

pub use tls::write_service_account_dir;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use ferry_netpol::ClusterNetworkPolicy;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request as HttpRequest, Response, StatusCode};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::{Metadata, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum KapiError {
    #[error("{kind} {key} already exists")]
    AlreadyExists { kind: &'static str, key: String },
    #[error("{kind} {key} not found")]
    NotFound { kind: &'static str, key: String },
    #[error("{kind} {key}: the patch's resourceVersion is not the current one")]
    Conflict { kind: &'static str, key: String },
    #[error("invalid {kind}: {msg}")]
    Invalid { kind: &'static str, msg: String },
    #[error("{kind} {key}: cannot convert: {source}")]
    Encoding {
        kind: &'static str,
        key: String,
        source: serde_json::Error,
    },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting the server thread: {0}")]
    Start(std::io::Error),
    #[error("making {0}: {1}")]
    Certificate(&'static str, #[source] rcgen::Error),
    #[error("configuring the server's TLS: {0}")]
    TlsConfig(#[source] tokio_rustls::rustls::Error),
}

/// A kubeconfig naming the server at `url` (plain HTTP, no credentials), written to
/// `path`; for a client started before the server is (it retries until it answers).
pub fn write_kubeconfig(path: &std::path::Path, url: &str) -> std::io::Result<()> {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {url}\n\
             contexts:\n- name: t\n  context:\n    cluster: t\n    user: t\n\
             current-context: t\nusers:\n- name: t\n  user: {{}}\n"
        ),
    )
}

/// A kubeconfig naming the server at `url` (https://) with its CA's PEM inline
/// (`certificate-authority-data`) and a bearer token, written to `path`.
pub fn write_kubeconfig_tls(
    path: &std::path::Path,
    url: &str,
    ca_pem: &str,
    token: &str,
) -> std::io::Result<()> {
    write_text(path, &tls::kubeconfig(url, Some(ca_pem), Some(token)))
}

fn write_text(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
        .map_err(|e| std::io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))
}

/// The kinds served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
    Node,
    /// `policy.networking.k8s.io/v1alpha2`, served unless [`KubeApi::set_cnp_served`] says
    /// its CRD is absent.
    ClusterNetworkPolicy,
}

/// What k8s-openapi's [`Resource`] says of a kind.
struct ResourceNames {
    kind: &'static str,
    api_version: &'static str,
    /// The resource's name in paths and RBAC rules.
    plural: &'static str,
    group: &'static str,
}

impl ResourceNames {
    fn of<R: Resource>() -> ResourceNames {
        ResourceNames {
            kind: R::KIND,
            api_version: R::API_VERSION,
            plural: R::URL_PATH_SEGMENT,
            group: R::GROUP,
        }
    }
}

impl Kind {
    fn resource(self) -> ResourceNames {
        match self {
            Kind::Namespace => ResourceNames::of::<Namespace>(),
            Kind::Pod => ResourceNames::of::<Pod>(),
            Kind::NetworkPolicy => ResourceNames::of::<NetworkPolicy>(),
            Kind::Node => ResourceNames::of::<Node>(),
            Kind::ClusterNetworkPolicy => ResourceNames::of::<ClusterNetworkPolicy>(),
        }
    }

    fn name(self) -> &'static str {
        self.resource().kind
    }

    fn api_version(self) -> &'static str {
        self.resource().api_version
    }

    fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Namespace | Kind::Node | Kind::ClusterNetworkPolicy
        )
    }

    /// The resource's name in paths and RBAC rules.
    fn plural(self) -> &'static str {
        self.resource().plural
    }

    fn group(self) -> &'static str {
        self.resource().group
    }

    /// Whether `v` decodes as this kind's type, as the server decodes what it stores.
    fn check(self, v: &Value) -> Result<(), serde_json::Error> {
        fn decodes<K: DeserializeOwned>(v: &Value) -> Result<(), serde_json::Error> {
            K::deserialize(v).map(drop)
        }
        match self {
            Kind::Namespace => decodes::<Namespace>(v),
            Kind::Pod => decodes::<Pod>(v),
            Kind::NetworkPolicy => decodes::<NetworkPolicy>(v),
            Kind::Node => decodes::<Node>(v),
            Kind::ClusterNetworkPolicy => decodes::<ClusterNetworkPolicy>(v),
        }
    }
}

/// A type the stand-in serves: `Namespace`, `Pod`, `NetworkPolicy`, `Node`.
pub trait Served: Resource + Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned {
    const SERVED: Kind;
}
impl Served for Namespace {
    const SERVED: Kind = Kind::Namespace;
}
impl Served for Pod {
    const SERVED: Kind = Kind::Pod;
}
impl Served for NetworkPolicy {
    const SERVED: Kind = Kind::NetworkPolicy;
}
impl Served for Node {
    const SERVED: Kind = Kind::Node;
}
impl Served for ClusterNetworkPolicy {
    const SERVED: Kind = Kind::ClusterNetworkPolicy;
}

/// One request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The raw query string.
    pub query: String,
    /// Who asked: the user of the bearer token (`system:serviceaccount:<ns>:<name>` for a
    /// service account's); `None` when no token was registered (anonymous) or the one sent
    /// was not.
    pub user: Option<String>,
    /// The HTTP status answered; `None` while the answer is being made, and for a request
    /// cut by an outage before it was answered.
    pub status: Option<u16>,
}

impl Request {
    /// A query parameter, decoded.
    pub fn param(&self, key: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    pub fn is_watch(&self) -> bool {
        matches!(self.param("watch").as_deref(), Some("true" | "1"))
    }

    /// Refused as unauthenticated (401) or unauthorized (403).
    pub fn is_denied(&self) -> bool {
        matches!(self.status, Some(401 | 403))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

struct Event {
    rv: u64,
    kind: Kind,
    ty: EventType,
    object: Value,
    /// The object before a MODIFIED, so a filtered watch can see it leave or enter.
    previous: Option<Value>,
}

type Key = (Kind, String, String);

struct State {
    rv: u64,
    uids: u64,
    objects: BTreeMap<Key, Value>,
    events: Vec<Event>,
    /// Versions below this are too old to watch from (410 Gone).
    floor: u64,
    down: bool,
    /// Whether the accept loop holds a listening socket (it follows `down`).
    listening: bool,
    /// Bumped when an outage starts: connections from before it are cut.
    outage: u64,
    shutdown: bool,
    bookmark_every: Duration,
    requests: Vec<Request>,
    /// Registered bearer tokens; while empty, requests are anonymous.
    tokens: HashMap<String, rbac::User>,
    /// While `None`, every request is allowed.
    policy: Option<rbac::Policy>,
    /// Whether ClusterNetworkPolicy's CRD is installed (else its paths are 404).
    cnp_served: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every change of `state`; watches and the accept loop wait on it.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind, still consistent enough
        // for a test server; keep serving rather than poison every later call.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// The running server; dropping it stops the server and joins its thread.
pub struct KubeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
    /// The CA's PEM when serving HTTPS.
    ca_pem: Option<String>,
}

impl KubeApi {
    /// Binds `addr` (port 0 for any) in the calling thread's network namespace and serves.
    pub fn bind(addr: SocketAddr) -> Result<KubeApi, KapiError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| KapiError::Bind { addr, source })?;
        KubeApi::serve(listener)
    }

    /// Serves on an already bound listener. The server runs on a thread spawned from the
    /// calling thread, so it is in the calling thread's network namespace: an outage's
    /// re-bind (see [`KubeApi::set_down`]) happens there too.
    pub fn serve(listener: TcpListener) -> Result<KubeApi, KapiError> {
        KubeApi::start(listener, None)
    }

    /// [`KubeApi::bind`] over HTTPS: a fresh CA and a server certificate valid for `sans`,
    /// the bound address, 127.0.0.1, ::1, localhost and the cluster's names of the API
    /// service (`kubernetes`, `kubernetes.default`, `.svc`, `.svc.cluster.local`).
    pub fn bind_tls(addr: SocketAddr, sans: &[IpAddr]) -> Result<KubeApi, KapiError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| KapiError::Bind { addr, source })?;
        KubeApi::serve_tls(listener, sans)
    }

    /// [`KubeApi::serve`] over HTTPS; see [`KubeApi::bind_tls`].
    pub fn serve_tls(listener: TcpListener, sans: &[IpAddr]) -> Result<KubeApi, KapiError> {
        let addr = listener.local_addr().map_err(KapiError::Start)?;
        let mut ips = sans.to_vec();
        ips.push(addr.ip());
        let identity = tls::identity(&ips)?;
        KubeApi::start(listener, Some(identity))
    }

    fn start(listener: TcpListener, identity: Option<tls::Identity>) -> Result<KubeApi, KapiError> {
        let addr = listener.local_addr().map_err(KapiError::Start)?;
        listener.set_nonblocking(true).map_err(KapiError::Start)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1,
                uids: 0,
                objects: BTreeMap::new(),
                events: Vec::new(),
                floor: 0,
                down: false,
                listening: true,
                outage: 0,
                shutdown: false,
                bookmark_every: Duration::from_secs(1),
                requests: Vec::new(),
                tokens: HashMap::new(),
                policy: None,
                cnp_served: true,
            }),
            changed: watch::channel(0).0,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(KapiError::Start)?;
        let s = shared.clone();
        let (acceptor, ca_pem) = match identity {
            Some(id) => (Some(id.acceptor), Some(id.ca_pem)),
            None => (None, None),
        };
        let thread = std::thread::Builder::new()
            .name("kapi".into())
            .spawn(move || runtime.block_on(accept_loop(s, listener, addr, acceptor)))
            .map_err(KapiError::Start)?;
        Ok(KubeApi {
            shared,
            addr,
            thread: Some(thread),
            ca_pem,
        })
    }

    /// A kubeconfig naming this server, written to `path`: no credentials; over HTTPS with
    /// the CA inline.
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> std::io::Result<()> {
        match &self.ca_pem {
            None => write_kubeconfig(path, &self.url()),
            Some(ca) => write_text(path, &tls::kubeconfig(&self.url(), Some(ca), None)),
        }
    }

    /// A kubeconfig naming this server and sending `token`, written to `path` (over HTTPS
    /// with the CA inline).
    pub fn write_kubeconfig_with_token(
        &self,
        path: &std::path::Path,
        token: &str,
    ) -> std::io::Result<()> {
        let text = tls::kubeconfig(&self.url(), self.ca_pem.as_deref(), Some(token));
        write_text(path, &text)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`, or `https://addr` over TLS: the cluster URL for a client.
    pub fn url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The PEM of the CA that signed the server's certificate: a client's
    /// `certificate-authority`, a pod's `ca.crt`. Empty when serving plain HTTP.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone().unwrap_or_default()
    }

    /// Registers a new random bearer token for service account `namespace`/`name` (user
    /// `system:serviceaccount:<namespace>:<name>`, groups `system:serviceaccounts`,
    /// `system:serviceaccounts:<namespace>`, `system:authenticated`) and returns it. From the
    /// first registered token on, requests without a registered one get 401.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        self.user_token(rbac::User::service_account(namespace, name))
    }

    /// Registers a new random bearer token for any user (a person, a node) and returns it.
    pub fn user_token(&self, user: rbac::User) -> String {
        let token = tls::random_token();
        self.shared.lock().tokens.insert(token.clone(), user);
        token
    }

    /// Authorizes every later request with RBAC, as a cluster holding these ClusterRoles and
    /// ClusterRoleBindings (plus its bootstrap discovery roles) does. Replaces any policy set
    /// before.
    pub fn set_rbac(&self, roles: Vec<ClusterRole>, bindings: Vec<ClusterRoleBinding>) {
        self.set_rbac_policy(rbac::Policy {
            cluster_roles: roles,
            cluster_role_bindings: bindings,
            ..Default::default()
        });
    }

    /// [`KubeApi::set_rbac`] with namespaced Roles and RoleBindings too.
    pub fn set_rbac_policy(&self, policy: rbac::Policy) {
        self.shared.lock().policy = Some(policy.with_bootstrap());
    }

    /// The current (highest assigned) resource version.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    pub fn create<K: Served>(&self, obj: K) -> Result<K, KapiError> {
        self.write(obj, false)
    }

    /// Replaces an existing object (keeping its uid and creation time).
    pub fn update<K: Served>(&self, obj: K) -> Result<K, KapiError> {
        self.write(obj, true)
    }

    fn write<K: Served>(&self, obj: K, replace: bool) -> Result<K, KapiError> {
        let kind = K::SERVED;
        let (ns, name) = key_of(kind, obj.metadata())?;
        let key = (kind, ns.clone(), name.clone());
        let shown = show_key(&ns, &name);
        let mut value = serde_json::to_value(&obj).map_err(|source| KapiError::Encoding {
            kind: kind.name(),
            key: shown.clone(),
            source,
        })?;
        let mut st = self.shared.lock();
        if kind.namespaced()
            && !st
                .objects
                .contains_key(&(Kind::Namespace, String::new(), ns.clone()))
        {
            return Err(KapiError::NotFound {
                kind: Kind::Namespace.name(),
                key: ns,
            });
        }
        let previous = st.objects.get(&key).cloned();
        match (&previous, replace) {
            (Some(_), false) => {
                return Err(KapiError::AlreadyExists {
                    kind: kind.name(),
                    key: shown,
                })
            }
            (None, true) => {
                return Err(KapiError::NotFound {
                    kind: kind.name(),
                    key: shown,
                })
            }
            _ => {}
        }
        st.rv += 1;
        let rv = st.rv;
        let (uid, created) = match &previous {
            Some(p) => (
                p["metadata"]["uid"].clone(),
                p["metadata"]["creationTimestamp"].clone(),
            ),
            None => {
                st.uids += 1;
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let stamp = k8s_openapi::jiff::Timestamp::from_second(secs)
                    .ok()
                    .and_then(|t| serde_json::to_value(Time(t)).ok())
                    .unwrap_or(Value::Null);
                (
                    json!(format!("00000000-0000-4000-8000-{:012x}", st.uids)),
                    stamp,
                )
            }
        };
        value["apiVersion"] = json!(kind.api_version());
        value["kind"] = json!(kind.name());
        let meta = &mut value["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        meta["uid"] = uid;
        meta["creationTimestamp"] = created;
        if kind == Kind::Namespace {
            meta["labels"]["kubernetes.io/metadata.name"] = json!(name);
            if value["status"]["phase"].is_null() {
                value["status"]["phase"] = json!("Active");
            }
        }
        let back: K =
            serde_json::from_value(value.clone()).map_err(|source| KapiError::Encoding {
                kind: kind.name(),
                key: shown,
                source,
            })?;
        st.objects.insert(key, value.clone());
        let ty = if previous.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        st.events.push(Event {
            rv,
            kind,
            ty,
            object: value,
            previous,
        });
        drop(st);
        self.shared.notify();
        Ok(back)
    }

    /// Deletes an object; `namespace` is `None` for a Namespace, which takes its pods and
    /// policies with it (each with its own DELETED event), as namespace deletion does.
    pub fn delete<K: Served>(&self, namespace: Option<&str>, name: &str) -> Result<K, KapiError> {
        let kind = K::SERVED;
        let ns = match (kind.namespaced(), namespace) {
            (true, Some(ns)) => ns.to_string(),
            (false, None) => String::new(),
            (true, None) => return Err(invalid(kind, "a namespaced object needs its namespace")),
            (false, Some(_)) => {
                return Err(invalid(kind, "a cluster-scoped object has no namespace"))
            }
        };
        let mut st = self.shared.lock();
        let key = (kind, ns.clone(), name.to_string());
        if !st.objects.contains_key(&key) {
            return Err(KapiError::NotFound {
                kind: kind.name(),
                key: show_key(&ns, name),
            });
        }
        if kind == Kind::Namespace {
            let inside: Vec<Key> = st
                .objects
                .keys()
                .filter(|(k, n, _)| k.namespaced() && n == name)
                .cloned()
                .collect();
            for k in inside {
                remove(&mut st, &k);
            }
        }
        let gone = remove(&mut st, &key);
        drop(st);
        self.shared.notify();
        serde_json::from_value(gone).map_err(|source| KapiError::Encoding {
            kind: kind.name(),
            key: show_key(&ns, name),
            source,
        })
    }

    /// Applies a JSON merge patch (RFC 7386) to a stored object, as a client's `PATCH` with
    /// `application/merge-patch+json` does (see the module's doc): a map merges, `null`
    /// removes a key; the object's identity stays; a change bumps its resourceVersion and
    /// watches see MODIFIED. `namespace` is `None` for a cluster-scoped kind.
    pub fn merge_patch<K: Served>(
        &self,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<K, KapiError> {
        let kind = K::SERVED;
        let ns = namespace.unwrap_or("").to_string();
        let shown = show_key(&ns, name);
        let key = (kind, ns, name.to_string());
        let value = apply_patch(&self.shared, key, patch).map_err(|r| match r.code {
            StatusCode::NOT_FOUND => KapiError::NotFound {
                kind: kind.name(),
                key: shown.clone(),
            },
            StatusCode::CONFLICT => KapiError::Conflict {
                kind: kind.name(),
                key: shown.clone(),
            },
            _ => KapiError::Invalid {
                kind: kind.name(),
                msg: r.message,
            },
        })?;
        serde_json::from_value(value).map_err(|source| KapiError::Encoding {
            kind: kind.name(),
            key: shown,
            source,
        })
    }

    /// The stored object, as a client would read it.
    pub fn get<K: Served>(&self, namespace: Option<&str>, name: &str) -> Option<K> {
        let st = self.shared.lock();
        let key = (
            K::SERVED,
            namespace.unwrap_or("").to_string(),
            name.to_string(),
        );
        st.objects
            .get(&key)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// Makes every version below `rv` too old: a watch from one gets `410 Gone` (an ERROR
    /// event with reason `Expired`), and so does every open watch that has not yet been sent
    /// anything at or above `rv`. `expire_before(resource_version() + 1)` forces every
    /// client to relist.
    pub fn expire_before(&self, rv: u64) {
        let mut st = self.shared.lock();
        st.floor = st.floor.max(rv);
        let floor = st.floor;
        st.events.retain(|e| e.rv >= floor);
        drop(st);
        self.shared.notify();
    }

    /// An outage: `true` closes the listening socket (connections are refused) and cuts
    /// every open connection; `false` listens again on the same address. Returns once the
    /// socket is closed or listening again, and from `true` on no client sees any change.
    pub fn set_down(&self, down: bool) {
        let mut st = self.shared.lock();
        if down && !st.down {
            st.outage += 1;
        }
        st.down = down;
        drop(st);
        self.shared.notify();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.shared.lock().listening == down {
            if std::time::Instant::now() > deadline {
                tracing::warn!("kapi: the listener did not follow set_down({down}) within 5 s");
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Whether ClusterNetworkPolicy's CRD is installed: while not, its paths answer 404 as
    /// the real server answers for a resource it does not know (default: installed).
    pub fn set_cnp_served(&self, served: bool) {
        self.shared.lock().cnp_served = served;
        self.shared.notify();
    }

    /// How often a watch that asked for bookmarks gets one (default 1 s).
    pub fn set_bookmark_interval(&self, every: Duration) {
        self.shared.lock().bookmark_every = every;
        self.shared.notify();
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// The requests refused as unauthenticated (401) or forbidden (403), in order.
    pub fn denied_requests(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(Request::is_denied)
            .collect()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.notify();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn invalid(kind: Kind, msg: &str) -> KapiError {
    KapiError::Invalid {
        kind: kind.name(),
        msg: msg.to_string(),
    }
}

fn show_key(ns: &str, name: &str) -> String {
    if ns.is_empty() {
        name.to_string()
    } else {
        format!("{ns}/{name}")
    }
}

fn key_of(kind: Kind, meta: &ObjectMeta) -> Result<(String, String), KapiError> {
    let name = meta
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid(kind, "metadata.name is required"))?;
    let ns = match (kind.namespaced(), &meta.namespace) {
        (true, Some(ns)) if !ns.is_empty() => ns.clone(),
        (true, _) => return Err(invalid(kind, "metadata.namespace is required")),
        (false, None) => String::new(),
        (false, Some(_)) => {
            return Err(invalid(
                kind,
                "a cluster-scoped object has no metadata.namespace",
            ))
        }
    };
    Ok((ns, name))
}

/// Removes an object, recording its DELETED event; returns its last state.
fn remove(st: &mut State, key: &Key) -> Value {
    let mut last = st.objects.remove(key).unwrap_or(Value::Null);
    st.rv += 1;
    last["metadata"]["resourceVersion"] = json!(st.rv.to_string());
    let rv = st.rv;
    st.events.push(Event {
        rv,
        kind: key.0,
        ty: EventType::Deleted,
        object: last.clone(),
        previous: None,
    });
    last
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
) {
    let mut listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| tracing::warn!("kapi: serving {addr}: {e}"))
        .ok();
    shared.lock().listening = listener.is_some();
    let mut changes = shared.changed.subscribe();
    loop {
        let (down, outage, shutdown) = {
            let st = shared.lock();
            (st.down, st.outage, st.shutdown)
        };
        if shutdown {
            return;
        }
        if down {
            listener = None;
            shared.lock().listening = false;
        } else if listener.is_none() {
            // Back from an outage: the same address again. Failing (the port taken meanwhile)
            // is retried; the test sees connections refused until then.
            listener = TcpListener::bind(addr)
                .and_then(|l| {
                    l.set_nonblocking(true)?;
                    tokio::net::TcpListener::from_std(l)
                })
                .map_err(|e| tracing::warn!("kapi: re-binding {addr}: {e}"))
                .ok();
            shared.lock().listening = listener.is_some();
        }
        match &listener {
            Some(l) => {
                tokio::select! {
                    accepted = l.accept() => {
                        if let Ok((stream, _)) = accepted {
                            tokio::spawn(serve_connection(
                                shared.clone(),
                                stream,
                                tls.clone(),
                                outage,
                            ));
                        }
                    }
                    _ = changes.changed() => {}
                }
            }
            None => {
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

/// Serves one connection (its TLS handshake first, over HTTPS) until it ends, an outage
/// starts or the server stops.
async fn serve_connection(
    shared: Arc<Shared>,
    stream: tokio::net::TcpStream,
    tls: Option<TlsAcceptor>,
    outage: u64,
) {
    let s = shared.clone();
    let conn = async move {
        match tls {
            None => serve_http(s, stream).await,
            Some(acceptor) => match acceptor.accept(stream).await {
                Ok(stream) => serve_http(s, stream).await,
                // A client that distrusts the certificate hangs up here; that is its answer.
                Err(e) => tracing::debug!("kapi: TLS handshake: {e}"),
            },
        }
    };
    let mut changes = shared.changed.subscribe();
    let cut = async {
        loop {
            {
                let st = shared.lock();
                if st.shutdown || st.outage != outage {
                    return;
                }
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    };
    // Dropping the connection future closes the socket mid-stream, as a dying server does.
    tokio::select! {
        _ = conn => {}
        _ = cut => {}
    }
}

async fn serve_http<S>(shared: Arc<Shared>, io: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await;
    if let Err(e) = served {
        tracing::debug!("kapi: connection: {e}");
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, body: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A `Status` failure, as the real server answers errors.
fn status(code: StatusCode, reason: &str, message: String) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

fn fail(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    full(code, &status(code, reason, message))
}

/// A path the stand-in serves nothing at, worded as the real server words it.
fn no_such_resource(path: &str) -> Response<Body> {
    fail(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("the server could not find the requested resource {path}"),
    )
}

/// A `Status` failure with `details` (the real server's `group`, `kind`, `name`, each left
/// out when empty).
fn fail_about(
    code: StatusCode,
    reason: &str,
    message: String,
    details: &rbac::Details,
) -> Response<Body> {
    let mut body = status(code, reason, message);
    let mut d = serde_json::Map::new();
    for (k, v) in [
        ("name", &details.name),
        ("group", &details.group),
        ("kind", &details.kind),
    ] {
        if !v.is_empty() {
            d.insert(k.into(), json!(v));
        }
    }
    body["details"] = Value::Object(d);
    full(code, &body)
}

/// What a request asks for.
struct Query {
    kind: Kind,
    namespace: Option<String>,
    fields: Vec<Requirement>,
    labels: Vec<Requirement>,
}

/// One term of a selector.
#[derive(Debug)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// A collection (`kind`, namespace or all), or one object of it (`Some(name)`).
struct Route {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
}

fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let r = |kind, ns: Option<&&str>, name: Option<&&str>| {
        Some(Route {
            kind,
            namespace: ns.map(|n| n.to_string()),
            name: name.map(|n| n.to_string()),
        })
    };
    match segs.as_slice() {
        ["api", "v1", "namespaces"] => r(Kind::Namespace, None, None),
        ["api", "v1", "namespaces", name] => r(Kind::Namespace, None, Some(name)),
        ["api", "v1", "nodes"] => r(Kind::Node, None, None),
        ["api", "v1", "nodes", name] => r(Kind::Node, None, Some(name)),
        ["api", "v1", "pods"] => r(Kind::Pod, None, None),
        ["api", "v1", "namespaces", ns, "pods"] => r(Kind::Pod, Some(ns), None),
        ["api", "v1", "namespaces", ns, "pods", name] => r(Kind::Pod, Some(ns), Some(name)),
        ["apis", "networking.k8s.io", "v1", "networkpolicies"] => {
            r(Kind::NetworkPolicy, None, None)
        }
        ["apis", "networking.k8s.io", "v1", "namespaces", ns, "networkpolicies"] => {
            r(Kind::NetworkPolicy, Some(ns), None)
        }
        ["apis", "networking.k8s.io", "v1", "namespaces", ns, "networkpolicies", name] => {
            r(Kind::NetworkPolicy, Some(ns), Some(name))
        }
        ["apis", "policy.networking.k8s.io", "v1alpha2", "clusternetworkpolicies"] => {
            r(Kind::ClusterNetworkPolicy, None, None)
        }
        ["apis", "policy.networking.k8s.io", "v1alpha2", "clusternetworkpolicies", name] => {
            r(Kind::ClusterNetworkPolicy, None, Some(name))
        }
        _ => None,
    }
}

fn parse_selector(text: &str, fields: bool) -> Result<Vec<Requirement>, String> {
    let mut out = Vec::new();
    for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if fields {
            let key = term.split(['=', '!']).next().unwrap_or("").trim();
            if !["spec.nodeName", "metadata.name", "metadata.namespace"].contains(&key) {
                return Err(format!("field label not supported: {key}"));
            }
        }
        let req = if let Some((k, v)) = term.split_once("!=") {
            Requirement::NotEquals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Requirement::Equals(k.trim().into(), v.trim().into())
        } else if fields {
            return Err(format!("invalid field selector term {term:?}"));
        } else if let Some(k) = term.strip_prefix('!') {
            Requirement::NotExists(k.trim().into())
        } else if term.contains(' ') || term.contains('(') {
            return Err(format!(
                "label selector term {term:?}: set-based selectors are not supported by this stand-in"
            ));
        } else {
            Requirement::Exists(term.into())
        };
        out.push(req);
    }
    Ok(out)
}

impl Query {
    fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if let Some(ns) = &self.namespace {
            if meta["namespace"].as_str() != Some(ns) {
                return false;
            }
        }
        let field = |k: &str| -> String {
            let v = match k {
                "spec.nodeName" => &obj["spec"]["nodeName"],
                "metadata.name" => &meta["name"],
                _ => &meta["namespace"],
            };
            v.as_str().unwrap_or("").to_string()
        };
        let label = |k: &str| meta["labels"][k].as_str().map(str::to_string);
        self.fields.iter().all(|r| match r {
            Requirement::Equals(k, v) => field(k) == *v,
            Requirement::NotEquals(k, v) => field(k) != *v,
            _ => true,
        }) && self.labels.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k).as_deref() == Some(v),
            Requirement::NotEquals(k, v) => label(k).as_deref() != Some(v),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
        })
    }
}

/// What authentication and authorization made of a request.
enum Verdict {
    Allowed,
    Unauthorized,
    Forbidden(String, rbac::Details),
    /// A path the server cannot read attributes from.
    Unreadable(String),
}

/// Authenticates (the bearer token, once any is registered) then authorizes (RBAC, once a
/// policy is set) a request, as the real server's filters do before any handler runs.
/// Returns the user's name too, for the record.
fn judge(st: &State, r: &Request, authorization: Option<&str>) -> (Option<String>, Verdict) {
    let user = if st.tokens.is_empty() {
        None
    } else {
        // As the server's bearer authenticator: scheme `Bearer` in any case, then the token.
        let token = authorization
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        match token.and_then(|t| st.tokens.get(t)) {
            Some(u) => Some(u.clone()),
            None => return (None, Verdict::Unauthorized),
        }
    };
    let name = user.as_ref().map(|u| u.name.clone());
    let Some(policy) = &st.policy else {
        return (name, Verdict::Allowed);
    };
    let attrs = match rbac::Attributes::from_request(&r.method, &r.path, &r.query) {
        Ok(a) => a,
        Err(msg) => return (name, Verdict::Unreadable(msg)),
    };
    let who = user.unwrap_or_else(rbac::User::anonymous);
    match rbac::authorize(policy, &who, &attrs) {
        rbac::Decision::Allow => (name, Verdict::Allowed),
        rbac::Decision::Deny { reason } => {
            let (message, details) = rbac::forbidden(&who, &attrs, &reason);
            (name, Verdict::Forbidden(message, details))
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: HttpRequest<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let mut record = Request {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().unwrap_or("").to_string(),
        user: None,
        status: None,
    };
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let authorization = header(hyper::header::AUTHORIZATION);
    let content_type = header(hyper::header::CONTENT_TYPE);
    let method = req.method().clone();
    let body = req.into_body();
    let judged = {
        let mut st = shared.lock();
        if st.down {
            None
        } else {
            let (user, verdict) = judge(&st, &record, authorization.as_deref());
            record.user = user;
            st.requests.push(record.clone());
            Some((st.requests.len() - 1, verdict))
        }
    };
    let Some((index, verdict)) = judged else {
        // Accepted just before the outage: never answered; the outage cuts it.
        return std::future::pending().await;
    };
    let response = match verdict {
        Verdict::Allowed if method == Method::PATCH && patchable(&record.path) => {
            patch_request(&shared, &record, content_type.as_deref(), body).await
        }
        Verdict::Allowed => respond(shared.clone(), &method, &record),
        Verdict::Unauthorized => fail(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".into(),
        ),
        Verdict::Forbidden(message, details) => {
            fail_about(StatusCode::FORBIDDEN, "Forbidden", message, &details)
        }
        Verdict::Unreadable(msg) => fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("failed to create RequestInfo: {msg}"),
        ),
    };
    if let Some(r) = shared.lock().requests.get_mut(index) {
        r.status = Some(response.status().as_u16());
    }
    Ok(response)
}

/// What the stand-in serves for an authorized request.
fn respond(shared: Arc<Shared>, method: &Method, record: &Request) -> Response<Body> {
    if method != Method::GET {
        return fail(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!(
                "{method} is not served by this stand-in; only get, list and watch (and patch \
                 of a Node)"
            ),
        );
    }
    let Some(Route {
        kind,
        namespace,
        name,
    }) = route(&record.path)
    else {
        return no_such_resource(&record.path);
    };
    if kind == Kind::ClusterNetworkPolicy && !shared.lock().cnp_served {
        return no_such_resource(&record.path);
    }
    if let Some(name) = name {
        return get_one(&shared, kind, namespace.as_deref(), &name);
    }
    let selectors = parse_selector(&record.param("fieldSelector").unwrap_or_default(), true)
        .and_then(|f| {
            parse_selector(&record.param("labelSelector").unwrap_or_default(), false)
                .map(|l| (f, l))
        });
    let (fields, labels) = match selectors {
        Ok(s) => s,
        Err(msg) => return fail(StatusCode::BAD_REQUEST, "BadRequest", msg),
    };
    let query = Query {
        kind,
        namespace,
        fields,
        labels,
    };
    if !record.is_watch() {
        let limit = record
            .param("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0);
        return list(&shared, &query, limit, record.param("continue").as_deref());
    }
    let from = match record.param("resourceVersion").as_deref() {
        None | Some("") | Some("0") => None,
        Some(v) => match v.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("invalid resource version {v:?}"),
                )
            }
        },
    };
    let bookmarks = matches!(
        record.param("allowWatchBookmarks").as_deref(),
        Some("true" | "1")
    );
    let timeout = record
        .param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(watch_stream(shared, query, from, bookmarks, timeout, tx));
    let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    let mut r = Response::new(BodyExt::boxed(body));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// One object as stored, or the real server's 404 for it.
fn get_one(shared: &Shared, kind: Kind, namespace: Option<&str>, name: &str) -> Response<Body> {
    let key = (kind, namespace.unwrap_or("").to_string(), name.to_string());
    if let Some(obj) = shared.lock().objects.get(&key) {
        return full(StatusCode::OK, obj);
    }
    refused(Refusal::not_found(kind, name))
}

/// The plural as the server qualifies it in messages: `nodes`, `networkpolicies.networking.k8s.io`.
fn qualified(kind: Kind) -> String {
    match kind.group() {
        "" => kind.plural().to_string(),
        group => format!("{}.{group}", kind.plural()),
    }
}

/// Why the server refused a write, as its `Status` says it.
#[derive(Debug)]
struct Refusal {
    code: StatusCode,
    reason: &'static str,
    message: String,
    /// The object's `details` (404 and 409 carry them).
    about: Option<rbac::Details>,
}

impl Refusal {
    fn new(code: StatusCode, reason: &'static str, message: String) -> Refusal {
        Refusal {
            code,
            reason,
            message,
            about: None,
        }
    }

    fn details(kind: Kind, name: &str) -> rbac::Details {
        rbac::Details {
            group: kind.group().into(),
            kind: kind.plural().into(),
            name: name.into(),
        }
    }

    fn not_found(kind: Kind, name: &str) -> Refusal {
        Refusal {
            about: Some(Refusal::details(kind, name)),
            ..Refusal::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} {name:?} not found", qualified(kind)),
            )
        }
    }
}

fn refused(r: Refusal) -> Response<Body> {
    match &r.about {
        Some(d) => fail_about(r.code, r.reason, r.message, d),
        None => fail(r.code, r.reason, r.message),
    }
}

/// Whether a PATCH of `path` is served: one Node, the only kind a client writes here.
fn patchable(path: &str) -> bool {
    matches!(
        route(path),
        Some(Route {
            kind: Kind::Node,
            name: Some(_),
            ..
        })
    )
}

/// The media types of a PATCH the stand-in applies, both as a JSON merge patch.
const MERGE_PATCH: &str = "application/merge-patch+json";
const STRATEGIC_MERGE_PATCH: &str = "application/strategic-merge-patch+json";

/// `PATCH` of one object (see [`patchable`]): the body as a JSON merge patch.
async fn patch_request(
    shared: &Shared,
    record: &Request,
    content_type: Option<&str>,
    body: Incoming,
) -> Response<Body> {
    let Some(Route {
        kind,
        namespace,
        name: Some(name),
    }) = route(&record.path)
    else {
        return no_such_resource(&record.path);
    };
    // The media type without its parameters (`; charset=utf-8`), compared as the server does.
    let media = content_type
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if media != MERGE_PATCH && media != STRATEGIC_MERGE_PATCH {
        return fail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({media:?}) - accepted media \
                 types include: {MERGE_PATCH}, {STRATEGIC_MERGE_PATCH}"
            ),
        );
    }
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("reading the request body: {e}"),
            )
        }
    };
    let patch: Value = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("error decoding patch: {e}"),
            )
        }
    };
    let key = (kind, namespace.unwrap_or_default(), name);
    match apply_patch(shared, key, &patch) {
        Ok(obj) => full(StatusCode::OK, &obj),
        Err(r) => refused(r),
    }
}

/// RFC 7386: an object patch merges into the target key by key, `null` removing the key; any
/// other patch value (a list too) replaces the target whole.
pub fn merge_patch_json(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let Value::Object(t) = target else {
        return;
    };
    for (k, v) in fields {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch_json(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Applies a merge patch to a stored object, as the server does: `metadata.resourceVersion`
/// in the patch is a precondition (409 when stale); the identity (`apiVersion`, `kind`,
/// name, namespace, uid, creationTimestamp) is kept whatever the patch says; the result must
/// still decode as its kind; a patch that changes nothing writes nothing (no new version, no
/// event), and any other gets the next resourceVersion and a MODIFIED event.
fn apply_patch(shared: &Shared, key: Key, patch: &Value) -> Result<Value, Refusal> {
    let kind = key.0;
    let name = key.2.clone();
    if !patch.is_object() {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "a merge patch of {} {name:?} must be a JSON object",
                qualified(kind)
            ),
        ));
    }
    let mut st = shared.lock();
    let Some(previous) = st.objects.get(&key).cloned() else {
        return Err(Refusal::not_found(kind, &name));
    };
    let current = previous["metadata"]["resourceVersion"].clone();
    if let Some(wanted) = patch["metadata"]["resourceVersion"].as_str() {
        if Some(wanted) != current.as_str() {
            return Err(Refusal {
                about: Some(Refusal::details(kind, &name)),
                ..Refusal::new(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} {name:?}: the object has been \
                         modified; please apply your changes to the latest version and try again",
                        qualified(kind)
                    ),
                )
            });
        }
    }
    let mut merged = previous.clone();
    merge_patch_json(&mut merged, patch);
    for field in ["apiVersion", "kind"] {
        merged[field] = previous[field].clone();
    }
    if !merged["metadata"].is_object() {
        merged["metadata"] = json!({});
    }
    for field in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "resourceVersion",
    ] {
        match previous["metadata"].get(field) {
            Some(v) => merged["metadata"][field] = v.clone(),
            None => {
                if let Some(m) = merged["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
    if kind == Kind::Namespace {
        merged["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
    }
    if merged == previous {
        return Ok(previous);
    }
    if let Err(e) = kind.check(&merged) {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("{} {name:?} after the patch: {e}", qualified(kind)),
        ));
    }
    st.rv += 1;
    let rv = st.rv;
    merged["metadata"]["resourceVersion"] = json!(rv.to_string());
    st.objects.insert(key, merged.clone());
    st.events.push(Event {
        rv,
        kind,
        ty: EventType::Modified,
        object: merged.clone(),
        previous: Some(previous),
    });
    drop(st);
    shared.notify();
    Ok(merged)
}

/// A continue token: `<resourceVersion>/<namespace>/<name>` of the last item served
/// (Kubernetes names never hold `/`).
fn parse_continue(token: &str) -> Option<(u64, String, String)> {
    let mut parts = token.splitn(3, '/');
    let rv = parts.next()?.parse().ok()?;
    Some((rv, parts.next()?.to_string(), parts.next()?.to_string()))
}

fn list(shared: &Shared, q: &Query, limit: Option<usize>, cont: Option<&str>) -> Response<Body> {
    let st = shared.lock();
    let (rv, after) = match cont.filter(|c| !c.is_empty()) {
        None => (st.rv, None),
        Some(token) => match parse_continue(token) {
            None => {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("continue key {token:?} is not valid"),
                )
            }
            Some((rv, _, _)) if rv < st.floor => {
                return fail(
                    StatusCode::GONE,
                    "Expired",
                    format!("the provided continue parameter is too old ({rv})"),
                )
            }
            Some((rv, ns, name)) => (rv, Some((q.kind, ns, name))),
        },
    };
    let from = match &after {
        Some(k) => std::ops::Bound::Excluded(k),
        None => std::ops::Bound::Unbounded,
    };
    let mut matching = st
        .objects
        .range((from, std::ops::Bound::Unbounded))
        .filter(|((k, _, _), v)| *k == q.kind && q.matches(v));
    let mut page: Vec<(&Key, &Value)> = Vec::new();
    for kv in matching.by_ref() {
        page.push(kv);
        if limit.is_some_and(|l| page.len() >= l) {
            break;
        }
    }
    let more = matching.next().is_some();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let (true, Some(((_, ns, name), _))) = (more, page.last()) {
        metadata["continue"] = json!(format!("{rv}/{ns}/{name}"));
    }
    let items: Vec<Value> = page
        .into_iter()
        .map(|(_, v)| {
            // List items carry no kind/apiVersion on the wire; the list does.
            let mut item = v.clone();
            if let Some(m) = item.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            item
        })
        .collect();
    full(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", q.kind.name()),
            "apiVersion": q.kind.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    )
}

fn line(ty: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": ty, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// Feeds one watch: events after `from` (all objects as ADDED when `from` is None), then
/// live ones, bookmarks when asked, until the timeout, an expiry past it, or the client goes.
async fn watch_stream(
    shared: Arc<Shared>,
    q: Query,
    from: Option<u64>,
    bookmarks: bool,
    timeout: Option<Duration>,
    tx: mpsc::Sender<Bytes>,
) {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut changes = shared.changed.subscribe();
    // `sent`: the version the client knows; `scanned`: events looked at (filtered or not).
    let mut initial = Vec::new();
    let (outage, mut sent, mut scanned, mut next_bookmark) = {
        let st = shared.lock();
        let next = Instant::now() + st.bookmark_every;
        match from {
            Some(rv) => (st.outage, rv, rv, next),
            None => {
                initial.extend(
                    st.objects
                        .iter()
                        .filter(|((k, _, _), v)| *k == q.kind && q.matches(v))
                        .map(|(_, v)| line("ADDED", v)),
                );
                (st.outage, st.rv, st.rv, next)
            }
        }
    };
    for b in initial {
        if tx.send(b).await.is_err() {
            return;
        }
    }
    loop {
        let mut out = Vec::new();
        let mut end = false;
        // Marked seen before reading the state, so a change after the read wakes us.
        changes.borrow_and_update();
        {
            let st = shared.lock();
            // From the start of an outage no change may reach a client.
            if st.shutdown || st.down || st.outage != outage {
                return;
            }
            if sent < st.floor {
                let gone = status(
                    StatusCode::GONE,
                    "Expired",
                    format!("too old resource version: {sent} ({})", st.floor),
                );
                out.push(line("ERROR", &gone));
                end = true;
            } else {
                let after = scanned;
                for e in st.events.iter().filter(|e| e.rv > after) {
                    scanned = e.rv;
                    if e.kind != q.kind {
                        continue;
                    }
                    let now = q.matches(&e.object);
                    let before = e.previous.as_ref().is_some_and(|p| q.matches(p));
                    let ty = match (e.ty, before, now) {
                        (EventType::Modified, true, false) => Some(EventType::Deleted),
                        (EventType::Modified, false, true) => Some(EventType::Added),
                        (EventType::Modified, false, false) => None,
                        (ty, _, true) => Some(ty),
                        (_, _, false) => None,
                    };
                    if let Some(ty) = ty {
                        out.push(line(ty.as_str(), &e.object));
                        sent = e.rv;
                    }
                }
                if bookmarks && Instant::now() >= next_bookmark {
                    let mark = json!({
                        "kind": q.kind.name(),
                        "apiVersion": q.kind.api_version(),
                        "metadata": {"resourceVersion": st.rv.to_string()},
                    });
                    out.push(line("BOOKMARK", &mark));
                    sent = st.rv;
                    scanned = scanned.max(st.rv);
                }
            }
            if Instant::now() >= next_bookmark {
                next_bookmark = Instant::now() + st.bookmark_every;
            }
            // Only this loop reads `changes`; mark what is seen now as handled.
        }
        for b in out {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        if end || deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(next_bookmark), if bookmarks => {}
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)) => {}
            _ = tx.closed() => return,
        }
    }
}
