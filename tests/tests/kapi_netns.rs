//! The Kubernetes API stand-in where the conformance runner puts it: listening inside one
//! network namespace, its client in another, over a veth (needs root). The re-bind after
//! an outage must happen in the server's namespace too: its address exists nowhere else.

use std::time::Duration;

use ferry_tests::kapi::KubeApi;
use ferry_tests::netns::{self, Netns};
use ferry_tests::{inside, needs_root};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{Api, Client, Config, ResourceExt};
use serde_json::json;

/// The names of the pods a client in `ns` lists from `url`, or the error it gets.
fn list_pods(ns: &Netns, url: &str) -> Result<Vec<String>, String> {
    let url = url.to_string();
    inside::block_on(ns, move || async move {
        let client = Client::try_from(Config::new(url.parse().expect("url"))).expect("client");
        let pods: Api<Pod> = Api::all(client);
        tokio::time::timeout(Duration::from_secs(5), pods.list(&Default::default()))
            .await
            .map_err(|_| "timed out".to_string())?
            .map(|l| l.items.iter().map(|p| p.name_any()).collect())
            .map_err(|e| chain(&e))
    })
}

/// An error with its sources: kube's own message names only the layer that failed.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out = format!("{out}: {c}");
        cause = c.source();
    }
    out
}

#[test]
fn serves_a_client_in_another_namespace_across_an_outage() {
    needs_root!();
    let server_ns = Netns::new("kapis");
    let client_ns = Netns::new("kapic");
    netns::link(
        &server_ns,
        "eth0",
        "192.0.2.1/24",
        &client_ns,
        "eth0",
        "192.0.2.2/24",
    );
    // Bound by a thread inside the server's namespace; the server thread stays there.
    let api = inside::block_on(&server_ns, || async {
        KubeApi::bind("192.0.2.1:0".parse().expect("address"))
    })
    .expect("serve inside the namespace");
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    api.create(ns).unwrap();
    let pod: Pod =
        serde_json::from_value(json!({"metadata": {"name": "a", "namespace": "x"}})).unwrap();
    api.create(pod).unwrap();

    assert_eq!(list_pods(&client_ns, &api.url()), Ok(vec!["a".to_string()]));
    api.set_down(true);
    let down = list_pods(&client_ns, &api.url());
    assert!(
        down.as_ref()
            .is_err_and(|e| e.contains("Connection refused")),
        "listed during an outage: {down:?}"
    );
    api.set_down(false);
    assert_eq!(list_pods(&client_ns, &api.url()), Ok(vec!["a".to_string()]));
    assert!(api.requests().iter().all(|r| r.path == "/api/v1/pods"));
}
