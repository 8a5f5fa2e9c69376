//! The Kubernetes API stand-in (`ferry_tests::kapi`) against the real client: kube's
//! watcher and reflector for Namespaces, Pods, NetworkPolicies and Nodes, and a Node's merge
//! patch, as the daemon runs them; then over HTTPS with a service account's token and the
//! shipped manifest's RBAC, as the daemon meets a cluster. No root needed: the server listens on 127.0.0.1 of the test's
//! own namespace.

use std::collections::BTreeSet;
use std::future::ready;
use std::time::Duration;

use ferry_tests::kapi::{
    merge_patch_json, rbac, write_service_account_dir, KapiError, KubeApi, Request,
};
use ferry_tests::manifest;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, NodeSpec, Pod, PodSpec};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Config, ResourceExt};

/// A plain http:// URL is all kube needs without a TLS feature: `Config::new` with the
/// server's URL, no auth, no certificates.
fn client(api: &KubeApi) -> Client {
    let config = Config::new(api.url().parse().expect("server URL"));
    Client::try_from(config).expect("kube client for an http URL")
}

/// The watcher's retry delay: short, so the outage tests take well under a second after the
/// server is back (the default starts at 800 ms and doubles).
struct Quick;
impl Iterator for Quick {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(Duration::from_millis(50))
    }
}
impl Backoff for Quick {
    fn reset(&mut self) {}
}

fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(String::from),
        ..Default::default()
    }
}

fn namespace(name: &str) -> Namespace {
    Namespace {
        metadata: meta(None, name),
        ..Default::default()
    }
}

fn pod(ns: &str, name: &str, node: &str) -> Pod {
    let mut m = meta(Some(ns), name);
    m.labels = Some([("pod".to_string(), name.to_string())].into());
    Pod {
        metadata: m,
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A Node as the kit makes one: its pod CIDR, and the hostname label.
fn node(name: &str, pod_cidr: &str) -> Node {
    let mut m = meta(None, name);
    m.labels = Some([("kubernetes.io/hostname".to_string(), name.to_string())].into());
    Node {
        metadata: m,
        spec: Some(NodeSpec {
            pod_cidr: Some(pod_cidr.into()),
            pod_cidrs: Some(vec![pod_cidr.into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn annotations(n: &Node) -> std::collections::BTreeMap<String, String> {
    n.metadata.annotations.clone().unwrap_or_default()
}

fn policy(ns: &str, name: &str, types: &[&str]) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(Some(ns), name),
        spec: Some(NetworkPolicySpec {
            policy_types: Some(types.iter().map(|t| t.to_string()).collect()),
            ..Default::default()
        }),
    }
}

/// A reflector over every object of one kind, running until the test ends.
fn reflect<K>(client: &Client) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
    )
    .backoff(Quick);
    tokio::spawn(stream.for_each(|_| ready(())));
    reader
}

/// `ns/name` of everything in a store.
fn keys<K: kube::Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> BTreeSet<String> {
    store
        .state()
        .iter()
        .map(|o| match o.namespace() {
            Some(ns) => format!("{ns}/{}", o.name_any()),
            None => o.name_any(),
        })
        .collect()
}

/// Waits for the stored policy x/deny's policyTypes to be `want`.
async fn until_deny_types(what: &str, store: &Store<NetworkPolicy>, want: &[&str]) {
    let want: Vec<String> = want.iter().map(|t| t.to_string()).collect();
    until(
        what,
        || {
            store
                .get(&reflector::ObjectRef::new("deny").within("x"))
                .and_then(|p| p.spec.clone()?.policy_types)
        },
        |t| t.as_ref() == Some(&want),
    )
    .await;
}

/// Waits for a store to hold exactly `want` (as `ns/name`).
async fn until_keys<K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug>(
    what: &str,
    store: &Store<K>,
    want: &[&str],
) {
    until(what, || keys(store), |k| *k == set(want)).await;
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Takes the API down and waits until its port refuses connections, as a dead
/// apiserver's does.
async fn go_down(api: &KubeApi) {
    api.set_down(true);
    until(
        "the port to refuse connections",
        || {
            std::net::TcpStream::connect(api.addr())
                .map(drop)
                .map_err(|e| e.kind())
        },
        |r| *r == Err(std::io::ErrorKind::ConnectionRefused),
    )
    .await;
}

/// Waits (up to 10 s) for `cond`, failing with `what` and the last value seen.
async fn until<T: std::fmt::Debug>(
    what: &str,
    mut probe: impl FnMut() -> T,
    cond: impl Fn(&T) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = probe();
        if cond(&v) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}; last seen {v:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn lists(api: &KubeApi, path: &str) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.path == path && !r.is_watch())
        .count()
}

fn start() -> KubeApi {
    KubeApi::bind("127.0.0.1:0".parse().unwrap()).expect("start the API stand-in")
}

/// A cluster of namespaces x, y; pods x/a, x/b; policy x/deny.
fn seed(api: &KubeApi) {
    api.create(namespace("x")).unwrap();
    api.create(namespace("y")).unwrap();
    api.create(pod("x", "a", "n1")).unwrap();
    api.create(pod("x", "b", "n2")).unwrap();
    api.create(policy("x", "deny", &["Ingress"])).unwrap();
}

/// Reflectors of the three kinds, once their initial lists (`what`) hold what [`seed`] made.
async fn reflect_seeded(
    c: &Client,
    what: &str,
) -> (Store<Namespace>, Store<Pod>, Store<NetworkPolicy>) {
    let namespaces = reflect::<Namespace>(c);
    let pods = reflect::<Pod>(c);
    let policies = reflect::<NetworkPolicy>(c);
    until(
        what,
        || (keys(&namespaces), keys(&pods), keys(&policies)),
        |s| *s == (set(&["x", "y"]), set(&["x/a", "x/b"]), set(&["x/deny"])),
    )
    .await;
    (namespaces, pods, policies)
}

/// The stand-in holding what [`seed`] made, and a client of it.
fn seeded() -> (KubeApi, Client) {
    let api = start();
    seed(&api);
    let c = client(&api);
    (api, c)
}

#[tokio::test]
async fn list_then_watch_changes_for_each_kind() {
    let (api, c) = seeded();
    let (namespaces, pods, policies) = reflect_seeded(&c, "the initial lists").await;
    // What the server gave: its resource version, uid, creation time, the namespace label.
    let x = namespaces.get(&reflector::ObjectRef::new("x")).unwrap();
    assert_eq!(x.labels()["kubernetes.io/metadata.name"], "x");
    assert!(x.metadata.uid.is_some() && x.metadata.creation_timestamp.is_some());

    // Each kind was listed, then watched from the list's version, asking for bookmarks. The
    // stores fill from the lists, so the watches may still be on their way.
    until(
        "each kind's watch",
        || api.requests().iter().filter(|r| r.is_watch()).count(),
        |n| *n >= 3,
    )
    .await;
    let reqs = api.requests();
    for path in [
        "/api/v1/namespaces",
        "/api/v1/pods",
        "/apis/networking.k8s.io/v1/networkpolicies",
    ] {
        let list = reqs
            .iter()
            .find(|r| r.path == path && !r.is_watch())
            .unwrap();
        let watch = reqs
            .iter()
            .find(|r| r.path == path && r.is_watch())
            .unwrap();
        assert_eq!(
            watch.param("allowWatchBookmarks").as_deref(),
            Some("true"),
            "{watch:?}"
        );
        assert!(
            watch.param("resourceVersion").is_some(),
            "{watch:?} {list:?}"
        );
        assert!(watch.param("timeoutSeconds").is_some(), "{watch:?}");
        // The default config selects nothing: the whole kind, every namespace.
        assert_eq!(list.param("labelSelector"), None);
        assert_eq!(list.param("fieldSelector"), None);
    }

    // Create, update, delete of each kind.
    api.create(pod("y", "a", "n1")).unwrap();
    let mut a = api.get::<Pod>(Some("x"), "a").unwrap();
    a.metadata.labels = Some([("pod".into(), "a".into()), ("role".into(), "web".into())].into());
    let before = a.resource_version();
    let a = api.update(a).unwrap();
    assert_ne!(a.resource_version(), before);
    api.delete::<Pod>(Some("x"), "b").unwrap();
    api.create(namespace("z")).unwrap();
    api.create(policy("y", "allow", &["Egress"])).unwrap();
    api.update(policy("x", "deny", &["Ingress", "Egress"]))
        .unwrap();

    until_keys("pods after the changes", &pods, &["x/a", "y/a"]).await;
    until(
        "the update of x/a",
        || {
            pods.get(&reflector::ObjectRef::new("a").within("x"))
                .map(|p| p.labels().get("role").cloned())
        },
        |r| *r == Some(Some("web".into())),
    )
    .await;
    until_keys("namespaces", &namespaces, &["x", "y", "z"]).await;
    until_keys("policies", &policies, &["x/deny", "y/allow"]).await;
    until_deny_types("the update of x/deny", &policies, &["Ingress", "Egress"]).await;

    // Deleting a namespace takes its pods and policies with it.
    api.delete::<Namespace>(None, "y").unwrap();
    until(
        "y's removal",
        || (keys(&namespaces), keys(&pods), keys(&policies)),
        |s| *s == (set(&["x", "z"]), set(&["x/a"]), set(&["x/deny"])),
    )
    .await;
    // No relist was needed for any of it.
    assert_eq!(lists(&api, "/api/v1/pods"), 1);
}

#[tokio::test]
async fn bookmarks_do_not_disturb_the_store() {
    let api = start();
    seed(&api);
    api.set_bookmark_interval(Duration::from_millis(50));
    let c = client(&api);
    let pods = reflect::<Pod>(&c);
    until_keys("the initial list", &pods, &["x/a", "x/b"]).await;

    // A raw watch shows the bookmarks are really sent (typed by kube's own WatchEvent).
    let raw: Api<Pod> = Api::all(c.clone());
    let rv = api.resource_version().to_string();
    let mut stream = raw
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    let mut marks = 0;
    while marks < 3 {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(Ok(WatchEvent::Bookmark(b)))) => {
                assert_eq!(b.types.kind, "Pod");
                assert_eq!(
                    b.metadata.resource_version,
                    api.resource_version().to_string()
                );
                marks += 1;
            }
            other => panic!("expected a bookmark, got {other:?}"),
        }
    }
    // Bookmarks between changes: the store follows the changes and nothing else.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(keys(&pods), set(&["x/a", "x/b"]));
    api.create(pod("x", "c", "n1")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    until_keys("x/c", &pods, &["x/a", "x/b", "x/c"]).await;
    assert_eq!(
        lists(&api, "/api/v1/pods"),
        1,
        "a bookmark made the watcher relist"
    );
}

#[tokio::test]
async fn an_expired_version_gets_410_and_the_watcher_relists() {
    let (api, c) = seeded();

    // The wire: a watch from a version below the floor gets an ERROR event, 410 Expired.
    let old = api.resource_version();
    api.create(pod("y", "a", "n1")).unwrap();
    api.expire_before(api.resource_version());
    let raw: Api<Pod> = Api::all(c.clone());
    let mut stream = raw
        .watch(&WatchParams::default(), &old.to_string())
        .await
        .unwrap()
        .boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Error(s))) => {
            assert_eq!((s.code, s.reason.as_str()), (410, "Expired"), "{s:?}");
        }
        other => panic!("expected 410 Expired, got {other:?}"),
    }

    let pods = reflect::<Pod>(&c);
    until_keys("the initial list", &pods, &["x/a", "x/b", "y/a"]).await;
    assert_eq!(lists(&api, "/api/v1/pods"), 1);

    // Expire everything: the open watch ends with 410; changes made at once must arrive
    // through the relist (or the watch after it) all the same.
    api.expire_before(api.resource_version() + 1);
    api.delete::<Pod>(Some("x"), "b").unwrap();
    api.create(pod("x", "c", "n2")).unwrap();
    until_keys(
        "convergence after the relist",
        &pods,
        &["x/a", "x/c", "y/a"],
    )
    .await;
    until("a second list", || lists(&api, "/api/v1/pods"), |n| *n >= 2).await;
    // And the store follows the new watch.
    api.delete::<Pod>(Some("y"), "a").unwrap();
    until_keys("a change after the relist", &pods, &["x/a", "x/c"]).await;
}

#[tokio::test]
async fn an_outage_keeps_the_store_and_the_client_resyncs_after_it() {
    let (api, c) = seeded();
    let pods = reflect::<Pod>(&c);
    let policies = reflect::<NetworkPolicy>(&c);
    until(
        "the initial lists",
        || (keys(&pods), keys(&policies)),
        |s| *s == (set(&["x/a", "x/b"]), set(&["x/deny"])),
    )
    .await;

    // Down means refused, as a dead apiserver's port is.
    go_down(&api).await;
    // Changes meanwhile: the clients cannot see them and keep what they had.
    api.delete::<Pod>(Some("x"), "b").unwrap();
    api.create(pod("x", "c", "n1")).unwrap();
    api.update(policy("x", "deny", &["Egress"])).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(keys(&pods), set(&["x/a", "x/b"]));
    assert_eq!(keys(&policies), set(&["x/deny"]));

    api.set_down(false);
    until_keys("pods after the outage", &pods, &["x/a", "x/c"]).await;
    until_deny_types(
        "the policy update made during the outage",
        &policies,
        &["Egress"],
    )
    .await;

    // A second outage during which the versions the clients hold expire: they must relist.
    let listed = lists(&api, "/api/v1/pods");
    api.set_down(true);
    api.delete::<Pod>(Some("x"), "a").unwrap();
    api.create(pod("x", "d", "n2")).unwrap();
    api.expire_before(api.resource_version() + 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(keys(&pods), set(&["x/a", "x/c"]));
    api.set_down(false);
    until_keys("pods after the second outage", &pods, &["x/c", "x/d"]).await;
    assert!(
        lists(&api, "/api/v1/pods") > listed,
        "no relist after an expired outage"
    );
}

#[tokio::test]
async fn field_selector_on_node_name() {
    let (api, c) = seeded();
    let (reader, writer) = reflector::store::<Pod>();
    let cfg = watcher::Config::default().fields("spec.nodeName=n1");
    let stream =
        reflector::reflector(writer, watcher(Api::<Pod>::all(c.clone()), cfg)).backoff(Quick);
    tokio::spawn(stream.for_each(|_| ready(())));
    until_keys("n1's pods", &reader, &["x/a"]).await;
    // A pod moving onto the node enters the selection, one leaving it is gone from it.
    api.update(pod("x", "b", "n1")).unwrap();
    api.update(pod("x", "a", "n2")).unwrap();
    until_keys("n1's pods after the moves", &reader, &["x/b"]).await;
    let namespaced: Api<Pod> = Api::namespaced(c.clone(), "x");
    let listed = namespaced
        .list(&kube::api::ListParams::default().fields("spec.nodeName=n2"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].name_any(), "a");
    assert!(api
        .requests()
        .iter()
        .any(|r: &Request| r.path == "/api/v1/namespaces/x/pods"
            && r.param("fieldSelector").as_deref() == Some("spec.nodeName=n2")));
    // An unsupported selector is an error, never silently ignored.
    let err = namespaced
        .list(&kube::api::ListParams::default().fields("status.phase=Running"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("field label not supported: status.phase"),
        "{err}"
    );
}

#[test]
fn bad_writes_are_refused_and_change_nothing() {
    let api = start();
    seed(&api);
    let rv = api.resource_version();
    assert!(matches!(
        api.create(namespace("x")),
        Err(KapiError::AlreadyExists { .. })
    ));
    assert!(matches!(
        api.update(pod("x", "c", "n1")),
        Err(KapiError::NotFound { .. })
    ));
    // A pod in a namespace that does not exist, a pod without a namespace or a name.
    assert!(matches!(
        api.create(pod("w", "a", "n1")),
        Err(KapiError::NotFound { .. })
    ));
    let mut p = pod("x", "c", "n1");
    p.metadata.namespace = None;
    assert!(matches!(api.create(p), Err(KapiError::Invalid { .. })));
    assert!(matches!(
        api.create(pod("x", "", "n1")),
        Err(KapiError::Invalid { .. })
    ));
    assert!(matches!(
        api.delete::<Pod>(None, "a"),
        Err(KapiError::Invalid { .. })
    ));
    assert!(matches!(
        api.delete::<Pod>(Some("x"), "zz"),
        Err(KapiError::NotFound { .. })
    ));
    assert_eq!(api.resource_version(), rv);
}

#[tokio::test]
async fn the_server_answers_what_it_does_not_serve_with_a_status() {
    let (api, c) = seeded();
    // A write through the client: refused with a Status, nothing stored.
    let pods: Api<Pod> = Api::namespaced(c.clone(), "x");
    let err = pods
        .create(&Default::default(), &pod("x", "z", "n1"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("is not served by this stand-in"),
        "{err}"
    );
    assert!(api.get::<Pod>(Some("x"), "z").is_none());
    // A kind it does not serve.
    let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::all(c.clone());
    let err = svcs.list(&Default::default()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("could not find the requested resource"),
        "{err}"
    );
    // A garbage resource version on a watch.
    let err = pods
        .watch(&WatchParams::default(), "not-a-number")
        .await
        .err()
        .map(|e| e.to_string());
    let reqs = api.requests();
    let last = reqs.last().unwrap();
    assert!(last.is_watch() && last.param("resourceVersion").as_deref() == Some("not-a-number"));
    assert!(err.is_some_and(|e| e.contains("invalid resource version")));
}

#[tokio::test]
async fn lists_are_paged_as_the_real_server_pages_them() {
    let api = start();
    seed(&api);
    for i in 0..5 {
        api.create(pod("y", &format!("p{i}"), "n1")).unwrap();
    }
    let rv = api.resource_version();
    let c = client(&api);
    let raw: Api<Pod> = Api::all(c.clone());

    // Pages of 3 through kube's own list call: 7 pods in 3 pages, each page carrying the
    // first page's version, the last one without a continue token.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut lp = kube::api::ListParams::default().limit(3);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = raw.list(&lp).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= 3);
        assert_eq!(page.metadata.resource_version, Some(rv.to_string()));
        seen.extend(
            page.items
                .iter()
                .map(|p| format!("{}/{}", p.namespace().unwrap(), p.name_any())),
        );
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3);
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!((seen.len(), unique.len()), (7, 7), "{seen:?}");

    // A garbled token is a 400; a token older than the floor is a 410.
    let bad = raw
        .list(
            &kube::api::ListParams::default()
                .limit(3)
                .continue_token("garbage"),
        )
        .await;
    assert!(
        matches!(&bad, Err(kube::Error::Api(s)) if s.code == 400),
        "{bad:?}"
    );
    let first = raw
        .list(&kube::api::ListParams::default().limit(3))
        .await
        .unwrap();
    api.create(pod("y", "late", "n1")).unwrap();
    api.expire_before(api.resource_version());
    let gone = raw
        .list(
            &kube::api::ListParams::default()
                .limit(3)
                .continue_token(first.metadata.continue_.as_deref().unwrap()),
        )
        .await;
    assert!(
        matches!(&gone, Err(kube::Error::Api(s)) if s.code == 410),
        "{gone:?}"
    );

    // kube's watcher lists in pages too (page size 2 here) and gets every pod.
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(raw, watcher::Config::default().page_size(2)),
    )
    .backoff(Quick);
    tokio::spawn(stream.for_each(|_| ready(())));
    until(
        "every pod through paged lists",
        || reader.state().len(),
        |n| *n == 8,
    )
    .await;
}

// ---- As a cluster serves an in-cluster client: HTTPS, a service account's token, RBAC ----

const FERRY: &str = "system:serviceaccount:kube-system:ferry";

fn start_tls() -> KubeApi {
    KubeApi::bind_tls("127.0.0.1:0".parse().unwrap(), &[]).expect("start the API stand-in over TLS")
}

/// A client as a user's tools make one: from a kubeconfig file (the CA inline, the token if
/// any), read by kube's own loader.
async fn kubeconfig_client(api: &KubeApi, token: Option<&str>) -> Client {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    match token {
        Some(t) => api.write_kubeconfig_with_token(&path, t).unwrap(),
        None => api.write_kubeconfig(&path).unwrap(),
    }
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&path).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    Client::try_from(config).unwrap()
}

/// The daemon's cluster: TLS, ferry's token, the manifest's RBAC, the seed objects.
async fn ferry_cluster() -> (KubeApi, Client) {
    let api = start_tls();
    seed(&api);
    let token = api.service_account_token("kube-system", "ferry");
    let (roles, bindings) = manifest::rbac();
    api.set_rbac(roles, bindings);
    let c = kubeconfig_client(&api, Some(&token)).await;
    (api, c)
}

/// The API error of a call that must fail with one.
fn api_error<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> Box<kube::core::Status> {
    match r {
        Err(kube::Error::Api(s)) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn over_tls_a_service_account_lists_and_watches_within_its_role() {
    let (api, c) = ferry_cluster().await;
    assert!(api.url().starts_with("https://127.0.0.1:"), "{}", api.url());
    assert!(api.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));

    let (_, pods, policies) = reflect_seeded(&c, "the initial lists over TLS").await;
    api.create(pod("y", "a", "n1")).unwrap();
    api.delete::<Pod>(Some("x"), "b").unwrap();
    api.update(policy("x", "deny", &["Egress"])).unwrap();
    until_keys("pods after changes", &pods, &["x/a", "y/a"]).await;
    until_deny_types("the policy update", &policies, &["Egress"]).await;

    // The manifest's verbs on each kind: get (an object, and a missing one), list, watch.
    let pods_x: Api<Pod> = Api::namespaced(c.clone(), "x");
    assert_eq!(pods_x.get("a").await.unwrap().name_any(), "a");
    let missing = api_error(pods_x.get("zz").await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(missing.message, "pods \"zz\" not found");
    let ns: Api<Namespace> = Api::all(c.clone());
    assert_eq!(ns.get("x").await.unwrap().name_any(), "x");
    let np: Api<NetworkPolicy> = Api::namespaced(c.clone(), "x");
    assert_eq!(np.get("deny").await.unwrap().name_any(), "deny");
    assert_eq!(np.list(&Default::default()).await.unwrap().items.len(), 1);
    let mut w = pods_x
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap()
        .boxed();
    assert!(matches!(w.next().await, Some(Ok(WatchEvent::Added(_)))));

    // Every request was the service account's and was allowed; the watches were watches.
    let reqs = api.requests();
    assert_eq!(api.denied_requests(), Vec::<Request>::new());
    assert!(
        reqs.iter().all(|r| r.user.as_deref() == Some(FERRY)),
        "{reqs:?}"
    );
    assert!(reqs.iter().any(|r| r.is_watch() && r.status == Some(200)));
    assert!(reqs
        .iter()
        .all(|r| matches!(r.status, None | Some(200 | 404))));
}

#[tokio::test]
async fn the_certificate_names_the_cluster_service_and_nothing_else_is_trusted() {
    let api = start_tls();
    seed(&api);
    let token = api.service_account_token("kube-system", "ferry");
    // Verified as `kubernetes.default.svc`, the name in-cluster DNS gives the API server.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    api.write_kubeconfig_with_token(&path, &token).unwrap();
    let mut config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&path).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    for name in [
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ] {
        config.tls_server_name = Some(name.into());
        let c = Client::try_from(config.clone()).unwrap();
        let pods: Api<Pod> = Api::all(c);
        assert_eq!(pods.list(&Default::default()).await.unwrap().items.len(), 2);
    }
    // A name it was not made for fails the handshake.
    config.tls_server_name = Some("kubernetes.example".into());
    let c = Client::try_from(config).unwrap();
    let pods: Api<Pod> = Api::all(c);
    assert!(pods.list(&Default::default()).await.is_err());
    // So does a client that does not know the CA; neither reached HTTP.
    let mut bare = Config::new(api.url().parse().unwrap());
    bare.auth_info.token = Some(token.into());
    let pods: Api<Pod> = Api::all(Client::try_from(bare).unwrap());
    assert!(pods.list(&Default::default()).await.is_err());
    assert_eq!(api.requests().len(), 2);
}

#[tokio::test]
async fn without_a_registered_token_a_request_gets_401() {
    let api = start_tls();
    seed(&api);
    let anonymous = kubeconfig_client(&api, None).await;
    let pods: Api<Pod> = Api::all(anonymous.clone());
    // No token registered: anonymous, as before.
    assert_eq!(pods.list(&Default::default()).await.unwrap().items.len(), 2);
    assert_eq!(api.requests()[0].user, None);

    let token = api.service_account_token("kube-system", "ferry");
    let e = api_error(pods.list(&Default::default()).await);
    assert_eq!(
        (e.code, e.reason.as_str(), e.message.as_str()),
        (401, "Unauthorized", "Unauthorized")
    );
    let wrong = kubeconfig_client(&api, Some("not-the-token")).await;
    let e = api_error(
        Api::<Pod>::all(wrong.clone())
            .list(&Default::default())
            .await,
    );
    assert_eq!((e.code, e.reason.as_str()), (401, "Unauthorized"));
    // A watch is refused the same way, before anything is streamed.
    let e = Api::<Namespace>::all(wrong)
        .watch(&WatchParams::default(), "0")
        .await
        .err();
    assert!(
        matches!(&e, Some(kube::Error::Api(s)) if s.code == 401),
        "{e:?}"
    );
    // The right token goes through.
    let good = kubeconfig_client(&api, Some(&token)).await;
    assert_eq!(
        Api::<Pod>::all(good)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );

    let denied = api.denied_requests();
    assert_eq!(denied.len(), 3, "{denied:?}");
    assert!(denied
        .iter()
        .all(|r| r.status == Some(401) && r.user.is_none()));
    assert_eq!(api.requests().last().unwrap().user.as_deref(), Some(FERRY));
}

#[tokio::test]
async fn what_the_manifests_role_does_not_grant_gets_403_naming_verb_and_resource() {
    let (api, c) = ferry_cluster().await;
    let who = format!("User \"{FERRY}\"");

    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::all(c.clone());
    let e = api_error(secrets.list(&Default::default()).await);
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        e.message,
        format!(
            "secrets is forbidden: {who} cannot list resource \"secrets\" in API group \"\" \
             at the cluster scope"
        )
    );

    let pods: Api<Pod> = Api::namespaced(c.clone(), "x");
    let e = api_error(pods.create(&Default::default(), &pod("x", "z", "n1")).await);
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            403,
            format!(
                "pods is forbidden: {who} cannot create resource \"pods\" in API group \"\" \
                 in the namespace \"x\""
            )
            .as_str()
        )
    );
    assert!(api.get::<Pod>(Some("x"), "z").is_none());

    let patch = kube::api::Patch::Merge(serde_json::json!({"metadata": {"labels": {"l": "v"}}}));
    let e = api_error(pods.patch("a", &Default::default(), &patch).await);
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            403,
            format!(
                "pods \"a\" is forbidden: {who} cannot patch resource \"pods\" in API group \"\" \
                 in the namespace \"x\""
            )
            .as_str()
        )
    );
    let e = api_error(pods.patch_status("a", &Default::default(), &patch).await);
    assert!(
        e.message.contains("cannot patch resource \"pods/status\""),
        "{}",
        e.message
    );
    let policies: Api<NetworkPolicy> = Api::namespaced(c.clone(), "x");
    let e = api_error(policies.delete("deny", &Default::default()).await);
    assert_eq!(
        e.message,
        format!(
            "networkpolicies.networking.k8s.io \"deny\" is forbidden: {who} cannot delete \
             resource \"networkpolicies\" in API group \"networking.k8s.io\" in the namespace \
             \"x\""
        )
    );
    // Watching a kind outside the role is refused too.
    let e = Api::<k8s_openapi::api::core::v1::Service>::all(c.clone())
        .watch(&WatchParams::default(), "0")
        .await
        .err();
    assert!(
        matches!(&e, Some(kube::Error::Api(s)) if s.code == 403
            && s.message.contains("cannot watch resource \"services\"")),
        "{e:?}"
    );

    let denied = api.denied_requests();
    let what: Vec<(&str, Option<u16>)> = denied
        .iter()
        .map(|r| (r.method.as_str(), r.status))
        .collect();
    assert_eq!(
        what,
        [
            ("GET", Some(403)),
            ("POST", Some(403)),
            ("PATCH", Some(403)),
            ("PATCH", Some(403)),
            ("DELETE", Some(403)),
            ("GET", Some(403)),
        ]
    );
    assert!(denied.iter().all(|r| r.user.as_deref() == Some(FERRY)));

    // Allowed but not served: the stand-in's own answer, as without RBAC.
    let (mut roles, mut bindings) = manifest::rbac();
    let mut writer = roles[0].clone();
    writer.metadata.name = Some("ferry-writer".into());
    writer.rules = Some(vec![k8s_openapi::api::rbac::v1::PolicyRule {
        api_groups: Some(vec!["".into()]),
        resources: Some(vec!["pods".into(), "services".into()]),
        verbs: vec!["create".into(), "patch".into(), "list".into()],
        ..Default::default()
    }]);
    let mut binding = bindings[0].clone();
    binding.metadata.name = Some("ferry-writer".into());
    binding.role_ref.name = "ferry-writer".into();
    roles.push(writer);
    bindings.push(binding);
    api.set_rbac(roles, bindings);
    let e = api_error(pods.create(&Default::default(), &pod("x", "z", "n1")).await);
    assert_eq!(e.code, 405, "{e:?}");
    let e = api_error(pods.patch("a", &Default::default(), &patch).await);
    assert_eq!(e.code, 405, "{e:?}");
    let e = api_error(
        Api::<k8s_openapi::api::core::v1::Service>::all(c)
            .list(&Default::default())
            .await,
    );
    assert_eq!(e.code, 404, "{e:?}");
    assert_eq!(api.denied_requests().len(), 6);
}

#[tokio::test]
async fn a_role_binding_grants_only_in_its_namespace() {
    use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
    let api = start_tls();
    seed(&api);
    api.create(pod("y", "c", "n1")).unwrap();
    let reader = api.service_account_token("y", "reader");
    let ops = api.user_token(rbac::User {
        name: "jane".into(),
        groups: vec!["ops".into(), "system:authenticated".into()],
    });
    let in_y = |name: &str| ObjectMeta {
        namespace: Some("y".into()),
        ..meta(None, name)
    };
    api.set_rbac_policy(rbac::Policy {
        roles: vec![Role {
            metadata: in_y("pod-reader"),
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec!["".into()]),
                resources: Some(vec!["pods".into()]),
                verbs: vec!["get".into(), "list".into(), "watch".into()],
                ..Default::default()
            }]),
        }],
        role_bindings: vec![RoleBinding {
            metadata: in_y("pod-readers"),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: "pod-reader".into(),
            },
            // The service account without a namespace (the binding's), and a group.
            subjects: Some(vec![
                Subject {
                    kind: "ServiceAccount".into(),
                    name: "reader".into(),
                    ..Default::default()
                },
                Subject {
                    kind: "Group".into(),
                    name: "ops".into(),
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    ..Default::default()
                },
            ]),
        }],
        ..Default::default()
    });
    for (token, user) in [(&reader, "system:serviceaccount:y:reader"), (&ops, "jane")] {
        let c = kubeconfig_client(&api, Some(token)).await;
        let y: Api<Pod> = Api::namespaced(c.clone(), "y");
        assert_eq!(y.list(&Default::default()).await.unwrap().items.len(), 1);
        assert_eq!(y.get("c").await.unwrap().name_any(), "c");
        let e = api_error(
            Api::<Pod>::namespaced(c.clone(), "x")
                .list(&Default::default())
                .await,
        );
        assert_eq!(
            e.message,
            format!(
                "pods is forbidden: User \"{user}\" cannot list resource \"pods\" in API group \
                 \"\" in the namespace \"x\""
            )
        );
        let e = api_error(Api::<Pod>::all(c).list(&Default::default()).await);
        assert!(e.message.ends_with("at the cluster scope"), "{}", e.message);
    }
}

#[tokio::test]
async fn an_outage_over_tls_keeps_the_store_and_the_client_resyncs() {
    let (api, c) = ferry_cluster().await;
    let pods = reflect::<Pod>(&c);
    until_keys("the initial list", &pods, &["x/a", "x/b"]).await;
    go_down(&api).await;
    api.delete::<Pod>(Some("x"), "b").unwrap();
    api.create(pod("x", "c", "n1")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(keys(&pods), set(&["x/a", "x/b"]));
    api.set_down(false);
    until_keys("pods after the outage", &pods, &["x/a", "x/c"]).await;
    assert_eq!(api.denied_requests(), Vec::<Request>::new());
}

#[tokio::test]
async fn the_service_account_files_are_what_an_in_cluster_client_reads() {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
    let (api, _) = ferry_cluster().await;
    let token = api.service_account_token("kube-system", "ferry");
    let dir = tempfile::tempdir().unwrap();
    let sa = dir.path().join("serviceaccount");
    write_service_account_dir(&sa, &token, &api.ca_pem(), "kube-system").unwrap();

    // The kubelet's layout: each file a link through `..data` to a timestamped directory.
    let read = |name: &str| std::fs::read_to_string(sa.join(name)).unwrap();
    assert_eq!(read("token"), token);
    assert_eq!(read("ca.crt"), api.ca_pem());
    assert_eq!(read("namespace"), "kube-system");
    for name in ["token", "ca.crt", "namespace"] {
        assert_eq!(
            std::fs::read_link(sa.join(name)).unwrap(),
            std::path::Path::new("..data").join(name)
        );
    }
    let data = std::fs::read_link(sa.join("..data")).unwrap();
    assert!(data.to_string_lossy().starts_with("..20"), "{data:?}");

    // A client made as kube's in-cluster config makes one, from these files alone.
    let mut config = Config::new(api.url().parse().unwrap());
    config.root_cert = Some(
        CertificateDer::pem_file_iter(sa.join("ca.crt"))
            .unwrap()
            .map(|c| c.unwrap().to_vec())
            .collect(),
    );
    config.auth_info.token_file = Some(sa.join("token").to_string_lossy().into_owned());
    config.default_namespace = read("namespace");
    let c = Client::try_from(config).unwrap();
    let pods: Api<Pod> = Api::default_namespaced(c);
    assert!(pods
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .is_empty());
    let last = api.requests().pop().unwrap();
    assert_eq!(
        (last.path.as_str(), last.user.as_deref(), last.status),
        (
            "/api/v1/namespaces/kube-system/pods",
            Some(FERRY),
            Some(200)
        )
    );

    // A rotation swaps every file at once and leaves no old directory behind.
    let next = api.service_account_token("kube-system", "ferry");
    write_service_account_dir(&sa, &next, &api.ca_pem(), "kube-system").unwrap();
    assert_eq!(read("token"), next);
    let entries: Vec<String> = std::fs::read_dir(&sa)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("..") && n != "..data")
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
}

/// The manifest's RBAC, typed: the daemon's service account is bound, and granted reading
/// (get, list, watch) of what NetworkPolicy and the Kubernetes datastore need, and one
/// write: patch of Nodes (its own Node's annotations).
#[test]
fn the_manifests_rbac_is_read_typed() {
    let (roles, bindings) = manifest::rbac();
    let ferry = rbac::User::service_account("kube-system", "ferry");
    let policy = rbac::Policy {
        cluster_roles: roles.clone(),
        cluster_role_bindings: bindings,
        ..Default::default()
    };
    let can = |method: &str, path: &str, query: &str| {
        let a = rbac::Attributes::from_request(method, path, query).unwrap();
        rbac::authorize(&policy, &ferry, &a) == rbac::Decision::Allow
    };
    for path in [
        "/api/v1/namespaces",
        "/api/v1/pods",
        "/apis/networking.k8s.io/v1/networkpolicies",
        "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies",
    ] {
        assert!(can("GET", path, ""), "list {path}");
        assert!(can("GET", path, "watch=true"), "watch {path}");
    }
    assert!(can("GET", "/api/v1/namespaces/x/pods/a", ""));
    assert!(can("GET", "/api/v1/nodes/n1", ""));
    assert!(can("GET", "/api/v1/nodes", ""));
    assert!(can("GET", "/api/v1/nodes", "watch=1"));
    assert!(can("PATCH", "/api/v1/nodes/n1", ""));
    // Nothing on the Node's status, nor any other write.
    assert!(!can("PATCH", "/api/v1/nodes/n1/status", ""));
    assert!(!can("PUT", "/api/v1/nodes/n1", ""));
    assert!(!can("PATCH", "/api/v1/namespaces/x/pods/a", ""));
    // ClusterNetworkPolicies are read, never written.
    let cnp = "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies";
    assert!(can("GET", &format!("{cnp}/tenants"), ""));
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        assert!(!can(method, &format!("{cnp}/tenants"), ""), "{method}");
    }
    for rule in roles.iter().flat_map(|r| r.rules.iter().flatten()) {
        let nodes = rule.resources.as_deref() == Some(&["nodes".to_string()][..]);
        assert!(
            rule.verbs
                .iter()
                .all(|v| ["get", "list", "watch"].contains(&v.as_str()) || (nodes && v == "patch")),
            "the manifest grants a write: {rule:?}"
        );
    }
}

// ---- Nodes: the Kubernetes datastore's objects ----

/// The RFC 7386 examples (its appendix A) that concern objects, and the replacement of
/// what is not one.
#[test]
fn a_merge_patch_merges_maps_and_null_deletes() {
    use serde_json::json;
    let cases = [
        (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
        (
            json!({"a": "b"}),
            json!({"b": "c"}),
            json!({"a": "b", "b": "c"}),
        ),
        (json!({"a": "b"}), json!({"a": null}), json!({})),
        (
            json!({"a": "b", "b": "c"}),
            json!({"a": null}),
            json!({"b": "c"}),
        ),
        (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
        (
            json!({"a": {"b": "c"}}),
            json!({"a": {"b": "d", "c": null}}),
            json!({"a": {"b": "d"}}),
        ),
        (
            json!({"a": [{"b": "c"}]}),
            json!({"a": [1]}),
            json!({"a": [1]}),
        ),
        (
            json!({"e": null}),
            json!({"a": 1}),
            json!({"e": null, "a": 1}),
        ),
        (
            json!([1, 2]),
            json!({"a": "b", "c": null}),
            json!({"a": "b"}),
        ),
        (
            json!({}),
            json!({"a": {"bb": {"ccc": null}}}),
            json!({"a": {"bb": {}}}),
        ),
        (json!({"a": "b"}), json!(["c"]), json!(["c"])),
    ];
    for (target, patch, want) in cases {
        let mut t = target.clone();
        merge_patch_json(&mut t, &patch);
        assert_eq!(t, want, "{target} + {patch}");
    }
}

#[test]
fn nodes_are_written_and_read_as_cluster_scoped_objects() {
    let api = start();
    let n = api.create(node("node0", "10.1.0.0/24")).unwrap();
    assert!(n.metadata.uid.is_some() && n.metadata.creation_timestamp.is_some());
    assert!(matches!(
        api.create(node("node0", "10.1.1.0/24")),
        Err(KapiError::AlreadyExists { .. })
    ));
    // A Node has no namespace, in either direction.
    let mut bad = node("node1", "10.1.1.0/24");
    bad.metadata.namespace = Some("x".into());
    assert!(matches!(api.create(bad), Err(KapiError::Invalid { .. })));
    assert!(matches!(
        api.delete::<Node>(Some("x"), "node0"),
        Err(KapiError::Invalid { .. })
    ));
    let mut n = api.get::<Node>(None, "node0").unwrap();
    n.spec.as_mut().unwrap().unschedulable = Some(true);
    let updated = api.update(n).unwrap();
    assert_eq!(
        updated.metadata.uid,
        api.get::<Node>(None, "node0").unwrap().metadata.uid
    );
    assert_eq!(updated.spec.unwrap().unschedulable, Some(true));
    // Deleting a namespace leaves Nodes alone.
    api.create(namespace("x")).unwrap();
    api.delete::<Namespace>(None, "x").unwrap();
    assert!(api.get::<Node>(None, "node0").is_some());
    api.delete::<Node>(None, "node0").unwrap();
    assert!(api.get::<Node>(None, "node0").is_none());
    assert!(matches!(
        api.merge_patch::<Node>(None, "node0", &serde_json::json!({})),
        Err(KapiError::NotFound { .. })
    ));
}

#[tokio::test]
async fn nodes_are_listed_watched_and_selected_as_the_other_kinds() {
    let api = start();
    api.create(node("node0", "10.1.0.0/24")).unwrap();
    api.create(node("node1", "10.1.1.0/24")).unwrap();
    let c = client(&api);
    let nodes = reflect::<Node>(&c);
    until_keys("the initial list of nodes", &nodes, &["node0", "node1"]).await;
    api.create(node("node2", "10.1.2.0/24")).unwrap();
    api.delete::<Node>(None, "node0").unwrap();
    until_keys("nodes after the changes", &nodes, &["node1", "node2"]).await;
    assert_eq!(lists(&api, "/api/v1/nodes"), 1);

    let all: Api<Node> = Api::all(c.clone());
    let one = all.get("node1").await.unwrap();
    assert_eq!(
        one.spec.unwrap().pod_cidrs,
        Some(vec!["10.1.1.0/24".to_string()])
    );
    let missing = api_error(all.get("node0").await);
    assert_eq!(
        (missing.code, missing.message.as_str()),
        (404, "nodes \"node0\" not found")
    );
    // Paged, and selected by name and by label.
    let page = all
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert!(page.metadata.continue_.is_some());
    let named = all
        .list(&kube::api::ListParams::default().fields("metadata.name=node2"))
        .await
        .unwrap();
    assert_eq!(
        named.items.iter().map(|n| n.name_any()).collect::<Vec<_>>(),
        ["node2"]
    );
    let labelled = all
        .list(&kube::api::ListParams::default().labels("kubernetes.io/hostname=node1"))
        .await
        .unwrap();
    assert_eq!(
        labelled
            .items
            .iter()
            .map(|n| n.name_any())
            .collect::<Vec<_>>(),
        ["node1"]
    );
}

#[tokio::test]
async fn a_merge_patch_of_a_node_changes_its_annotations_and_a_watch_sees_it() {
    let api = start();
    let made = api.create(node("node0", "10.1.0.0/24")).unwrap();
    let c = client(&api);
    let nodes: Api<Node> = Api::all(c.clone());
    let store = reflect::<Node>(&c);
    until_keys("the initial list", &store, &["node0"]).await;
    let from = api.resource_version().to_string();
    let mut w = nodes
        .watch(&WatchParams::default().timeout(5), &from)
        .await
        .unwrap()
        .boxed();

    // What the daemon publishes, as it publishes it.
    let publish = Patch::Merge(serde_json::json!({"metadata": {"annotations": {
        "ferry.dev/public-ip": "192.0.2.11",
        "ferry.dev/vtep-mac": "aa:bb:cc:dd:ee:ff",
    }}}));
    let patched = nodes
        .patch("node0", &PatchParams::default(), &publish)
        .await
        .unwrap();
    assert_eq!(annotations(&patched)["ferry.dev/public-ip"], "192.0.2.11");
    assert_eq!(patched.metadata.uid, made.metadata.uid);
    assert_eq!(
        patched.metadata.creation_timestamp,
        made.metadata.creation_timestamp
    );
    assert_eq!(patched.labels()["kubernetes.io/hostname"], "node0");
    assert_eq!(
        patched.spec, made.spec,
        "a patch of annotations leaves the spec"
    );
    assert_eq!(
        patched.resource_version(),
        Some(api.resource_version().to_string())
    );
    assert_ne!(patched.resource_version(), made.resource_version());
    let req = api
        .requests()
        .into_iter()
        .rfind(|r| r.method == "PATCH")
        .unwrap();
    assert_eq!(
        (req.path.as_str(), req.status),
        ("/api/v1/nodes/node0", Some(200))
    );
    match w.next().await {
        Some(Ok(WatchEvent::Modified(n))) => {
            assert_eq!(annotations(&n)["ferry.dev/vtep-mac"], "aa:bb:cc:dd:ee:ff");
        }
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    until(
        "the reflector to see the annotations",
        || {
            store
                .get(&reflector::ObjectRef::new("node0"))
                .map(|n| annotations(&n).len())
        },
        |n| *n == Some(2),
    )
    .await;

    // null deletes one key, the others stay; a strategic merge patch merges maps the same.
    let rv = api.resource_version();
    let p = Patch::Strategic(serde_json::json!({"metadata": {"annotations": {
        "ferry.dev/vtep-mac": null, "ferry.dev/usage": "{\"used\":1,\"capacity\":254}",
    }}}));
    let n = nodes
        .patch("node0", &PatchParams::default(), &p)
        .await
        .unwrap();
    assert_eq!(
        annotations(&n).keys().collect::<Vec<_>>(),
        ["ferry.dev/public-ip", "ferry.dev/usage"]
    );
    assert_eq!(api.resource_version(), rv + 1);
    // The same patch again changes nothing, so writes nothing.
    let again = nodes
        .patch("node0", &PatchParams::default(), &p)
        .await
        .unwrap();
    assert_eq!(again.resource_version(), n.resource_version());
    assert_eq!(api.resource_version(), rv + 1);
    // The identity stays whatever the patch says.
    let rename =
        Patch::Merge(serde_json::json!({"metadata": {"uid": "x", "creationTimestamp": null}}));
    let n = nodes
        .patch("node0", &PatchParams::default(), &rename)
        .await
        .unwrap();
    assert_eq!(n.metadata.uid, made.metadata.uid);
    assert_eq!(
        n.metadata.creation_timestamp,
        made.metadata.creation_timestamp
    );
    // A stale resourceVersion in the patch is a failed precondition.
    let stale = Patch::Merge(serde_json::json!({"metadata": {
        "resourceVersion": made.resource_version(), "annotations": {"a": "b"}}}));
    let e = api_error(nodes.patch("node0", &PatchParams::default(), &stale).await);
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"), "{e:?}");
    // A patch the result of which is no Node is refused, and changes nothing.
    let bad = Patch::Merge(serde_json::json!({"spec": {"podCIDRs": "10.9.0.0/24"}}));
    let e = api_error(nodes.patch("node0", &PatchParams::default(), &bad).await);
    assert_eq!(e.code, 400, "{e:?}");
    // Server-side apply is a patch type the stand-in does not serve: 415, as the real
    // server answers a type it does not know.
    let apply = Patch::Apply(serde_json::json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node0", "annotations": {"a": "b"}}}));
    let e = api_error(
        nodes
            .patch("node0", &PatchParams::apply("ferry-test"), &apply)
            .await,
    );
    assert_eq!(
        (e.code, e.reason.as_str()),
        (415, "UnsupportedMediaType"),
        "{e:?}"
    );
    // A Node that does not exist.
    let e = api_error(
        nodes
            .patch("node9", &PatchParams::default(), &publish)
            .await,
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (404, "nodes \"node9\" not found")
    );
    let stored = api.get::<Node>(None, "node0").unwrap();
    assert!(!annotations(&stored).contains_key("a"), "{stored:?}");
    assert_eq!(stored.spec, made.spec);
    // Any other kind is still not patched here.
    api.create(namespace("x")).unwrap();
    api.create(pod("x", "a", "node0")).unwrap();
    let pods: Api<Pod> = Api::namespaced(c, "x");
    let e = api_error(pods.patch("a", &PatchParams::default(), &publish).await);
    assert_eq!(e.code, 405, "{e:?}");
}

#[tokio::test]
async fn patching_a_node_under_rbac_needs_the_patch_verb() {
    let (api, c) = ferry_cluster().await;
    api.create(node("node0", "10.1.0.0/24")).unwrap();
    let nodes: Api<Node> = Api::all(c.clone());
    let publish = Patch::Merge(serde_json::json!({"metadata": {"annotations": {
        "ferry.dev/public-ip": "192.0.2.11"}}}));
    // The manifest's role: the daemon reads every Node and patches its own.
    let store = reflect::<Node>(&c);
    until_keys("the nodes over TLS", &store, &["node0"]).await;
    nodes.get("node0").await.unwrap();
    nodes
        .patch("node0", &PatchParams::default(), &publish)
        .await
        .unwrap();
    assert_eq!(api.denied_requests(), Vec::<Request>::new());

    // A role that reads Nodes but may not patch them.
    let (mut roles, bindings) = manifest::rbac();
    for rule in roles[0].rules.iter_mut().flatten() {
        rule.verbs.retain(|v| v != "patch");
    }
    api.set_rbac(roles, bindings);
    let other = Patch::Merge(serde_json::json!({"metadata": {"annotations": {
        "ferry.dev/public-ip": "192.0.2.12"}}}));
    let e = api_error(nodes.patch("node0", &PatchParams::default(), &other).await);
    assert_eq!(
        (e.code, e.reason.as_str(), e.message.as_str()),
        (
            403,
            "Forbidden",
            format!(
                "nodes \"node0\" is forbidden: User \"{FERRY}\" cannot patch resource \"nodes\" \
                 in API group \"\" at the cluster scope"
            )
            .as_str()
        )
    );
    assert_eq!(
        annotations(&api.get::<Node>(None, "node0").unwrap())["ferry.dev/public-ip"],
        "192.0.2.11",
        "the denied patch changed nothing"
    );
    nodes.get("node0").await.unwrap();
    let denied = api.denied_requests();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(
        (denied[0].method.as_str(), denied[0].user.as_deref()),
        ("PATCH", Some(FERRY))
    );
}
