//! The Kubernetes API stand-in (`ferry_tests::kapi`) against the real client: kube's
//! watcher and reflector for Namespaces, Pods and NetworkPolicies, as the daemon will run
//! them. No root needed: the server listens on 127.0.0.1 of the test's own namespace.

use std::collections::BTreeSet;
use std::future::ready;
use std::time::Duration;

use ferry_tests::kapi::{KapiError, KubeApi, Request};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{WatchEvent, WatchParams};
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

/// The policyTypes of a stored policy.
fn policy_types(store: &Store<NetworkPolicy>, ns: &str, name: &str) -> Option<Vec<String>> {
    store
        .get(&reflector::ObjectRef::new(name).within(ns))
        .and_then(|p| p.spec.clone()?.policy_types)
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

#[tokio::test]
async fn list_then_watch_changes_for_each_kind() {
    let api = start();
    seed(&api);
    let c = client(&api);
    let namespaces = reflect::<Namespace>(&c);
    let pods = reflect::<Pod>(&c);
    let policies = reflect::<NetworkPolicy>(&c);

    until(
        "the initial lists",
        || (keys(&namespaces), keys(&pods), keys(&policies)),
        |s| *s == (set(&["x", "y"]), set(&["x/a", "x/b"]), set(&["x/deny"])),
    )
    .await;
    // What the server gave: its resource version, uid, creation time, the namespace label.
    let x = namespaces.get(&reflector::ObjectRef::new("x")).unwrap();
    assert_eq!(x.labels()["kubernetes.io/metadata.name"], "x");
    assert!(x.metadata.uid.is_some() && x.metadata.creation_timestamp.is_some());

    // Each kind was listed, then watched from the list's version, asking for bookmarks.
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
    until(
        "the update of x/deny",
        || policy_types(&policies, "x", "deny"),
        |t| *t == Some(vec!["Ingress".into(), "Egress".into()]),
    )
    .await;

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
    let api = start();
    seed(&api);
    let c = client(&api);

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
    let api = start();
    seed(&api);
    let c = client(&api);
    let pods = reflect::<Pod>(&c);
    let policies = reflect::<NetworkPolicy>(&c);
    until(
        "the initial lists",
        || (keys(&pods), keys(&policies)),
        |s| *s == (set(&["x/a", "x/b"]), set(&["x/deny"])),
    )
    .await;

    api.set_down(true);
    // Down means refused, as a dead apiserver's port is.
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
    // Changes meanwhile: the clients cannot see them and keep what they had.
    api.delete::<Pod>(Some("x"), "b").unwrap();
    api.create(pod("x", "c", "n1")).unwrap();
    api.update(policy("x", "deny", &["Egress"])).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(keys(&pods), set(&["x/a", "x/b"]));
    assert_eq!(keys(&policies), set(&["x/deny"]));

    api.set_down(false);
    until_keys("pods after the outage", &pods, &["x/a", "x/c"]).await;
    until(
        "the policy update made during the outage",
        || policy_types(&policies, "x", "deny"),
        |t| *t == Some(vec!["Egress".into()]),
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
    let api = start();
    seed(&api);
    let c = client(&api);
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
    let api = start();
    seed(&api);
    let c = client(&api);
    // A write through the client: refused with a Status, nothing stored.
    let pods: Api<Pod> = Api::namespaced(c.clone(), "x");
    let err = pods
        .create(&Default::default(), &pod("x", "z", "n1"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("only list and watch"), "{err}");
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
