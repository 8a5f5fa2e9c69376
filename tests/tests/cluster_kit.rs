//! The cluster kit's Kubernetes datastore, without a daemon: the Node objects it makes as
//! the kubelet and the controller-manager would, the kubeconfig it gives the daemons, and
//! the RBAC that kubeconfig meets. The daemons are never started (`add_node_stopped`), so
//! these hold whatever the daemon does.

use ferry_tests::cluster::{Cluster, Datastore};
use ferry_tests::needs_root;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

fn pod_cidrs(n: &Node) -> (Option<String>, Option<Vec<String>>) {
    let spec = n.spec.clone().unwrap_or_default();
    (spec.pod_cidr, spec.pod_cidrs)
}

fn addresses(n: &Node) -> Vec<(String, String)> {
    let status = n.status.clone().unwrap_or_default();
    status
        .addresses
        .unwrap_or_default()
        .into_iter()
        .map(|a| (a.type_, a.address))
        .collect()
}

fn ready(n: &Node) -> Option<String> {
    let status = n.status.clone().unwrap_or_default();
    status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status)
}

#[test]
fn each_node_gets_a_node_object_with_the_controller_managers_pod_cidrs() {
    needs_root!();
    let mut c = Cluster::builder()
        .datastore(Datastore::Kubernetes)
        .nodes(0)
        .cluster_cidr("10.77.0.0/16")
        .cluster_cidr_v6("fd00:77::/56")
        .build();
    assert_eq!(c.datastore, Datastore::Kubernetes);
    c.add_node_stopped();
    c.add_node_stopped();
    let n0 = c.node_object(0);
    assert_eq!(
        pod_cidrs(&n0),
        (
            Some("10.77.0.0/24".into()),
            Some(vec!["10.77.0.0/24".into(), "fd00:77::/64".into()])
        )
    );
    assert_eq!(
        pod_cidrs(&c.node_object(1)).1,
        Some(vec!["10.77.1.0/24".into(), "fd00:77:0:1::/64".into()])
    );
    assert_eq!(
        addresses(&n0),
        [
            ("InternalIP".to_string(), c.nodes[0].ip.clone()),
            ("Hostname".to_string(), "node0".to_string())
        ]
    );
    assert_eq!(
        n0.metadata.labels.clone().unwrap_or_default()["kubernetes.io/hostname"],
        "node0"
    );
    assert_eq!(ready(&n0).as_deref(), Some("True"));
    // The daemon is pointed at the API, not at etcd.
    let args = &c.nodes[0].daemon_args;
    let kc = c.kubeconfig_path().expect("a kubeconfig");
    assert!(
        args.starts_with(&format!(
            "--datastore kubernetes --kubeconfig {}",
            kc.display()
        )),
        "{args}"
    );
    assert!(!args.contains("--etcd"), "{args}");
    assert!(args.contains("--cluster-cidr 10.77.0.0/16"), "{args}");
    assert!(args.contains("--cluster-cidr-v6 fd00:77::/56"), "{args}");

    // A node the controller-manager gave nothing; the next one still gets the next range.
    c.add_node_without_pod_cidr();
    assert_eq!(pod_cidrs(&c.node_object(2)), (None, None));
    c.add_node_stopped();
    assert_eq!(
        pod_cidrs(&c.node_object(3)).0.as_deref(),
        Some("10.77.2.0/24")
    );

    // What tests do to the objects.
    let n = c.patch_node_annotations(
        0,
        &[
            ("ferry.dev/public-ip", Some("192.0.2.99")),
            ("x", Some("y")),
        ],
    );
    assert_eq!(n.metadata.annotations.clone().unwrap_or_default().len(), 2);
    let n = c.patch_node_annotations(0, &[("x", None)]);
    assert_eq!(
        n.metadata
            .annotations
            .unwrap_or_default()
            .keys()
            .collect::<Vec<_>>(),
        ["ferry.dev/public-ip"]
    );
    c.set_node_ready(1, false);
    assert_eq!(ready(&c.node_object(1)).as_deref(), Some("False"));
    assert_eq!(
        pod_cidrs(&c.node_object(1)).0.as_deref(),
        Some("10.77.1.0/24"),
        "the condition alone changed"
    );
    c.set_node_ready(1, true);
    assert_eq!(ready(&c.node_object(1)).as_deref(), Some("True"));
    c.delete_node_object(1);
    assert!(c.api().get::<Node>(None, "node1").is_none());
    // The kit's own writes need no token: none of them was an HTTP request. The one
    // daemon started (the node without a pod CIDR's) asks as the `ferry` service account.
    let others: Vec<_> = c
        .api()
        .requests()
        .into_iter()
        .filter(|r| r.user.as_deref() != Some("system:serviceaccount:kube-system:ferry"))
        .collect();
    assert!(others.is_empty(), "{others:?}");
}

/// The daemons' kubeconfig reaches the API from a node's namespace with the `ferry`
/// service account's token, which the manifest's RBAC lets read and patch Nodes and
/// nothing it does not grant.
#[test]
fn the_daemons_kubeconfig_is_the_ferry_service_accounts_under_the_manifests_rbac() {
    needs_root!();
    let mut c = Cluster::builder()
        .datastore(Datastore::Kubernetes)
        .nodes(0)
        .build();
    c.add_node_stopped();
    let kc = c.kubeconfig_path().expect("a kubeconfig");
    let (listed, patched, secrets) =
        ferry_tests::inside::block_on(&c.nodes[0].host, move || async move {
            let config = Config::from_custom_kubeconfig(
                Kubeconfig::read_from(&kc).expect("the kubeconfig reads"),
                &KubeConfigOptions::default(),
            )
            .await
            .expect("a client config");
            let client = Client::try_from(config).expect("a client");
            let nodes: Api<Node> = Api::all(client.clone());
            let listed = nodes.list(&Default::default()).await.map(|l| l.items.len());
            let patch = kube::api::Patch::Merge(serde_json::json!(
                {"metadata": {"annotations": {"ferry.dev/public-ip": "192.0.2.11"}}}));
            let patched = nodes
                .patch("node0", &Default::default(), &patch)
                .await
                .map(drop);
            let secrets = Api::<Secret>::all(client)
                .list(&Default::default())
                .await
                .map(drop);
            (listed, patched, secrets)
        });
    assert_eq!(listed.expect("list nodes"), 1);
    patched.expect("patch its Node");
    assert!(
        matches!(&secrets, Err(kube::Error::Api(s)) if s.code == 403),
        "{secrets:?}"
    );
    let who: Vec<Option<String>> = c.api().requests().into_iter().map(|r| r.user).collect();
    assert_eq!(
        who,
        vec![Some("system:serviceaccount:kube-system:ferry".to_string()); 3]
    );
}
