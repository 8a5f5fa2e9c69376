use super::*;

fn file(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("netpol")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn pod(s: &str) -> PodRef {
    s.parse().unwrap()
}

fn pods(list: &[&str]) -> Vec<PodRef> {
    list.iter().map(|s| pod(s)).collect()
}

/// One case around the given YAML lines (a case body at two spaces of indentation).
fn one_case(body: &str) -> String {
    format!("cases:\n- name: t\n  source: derived\n{body}")
}

const GOOD_BODY: &str = "  pods: [x/a, x/b]
  steps:
  - actions:
    - create: {name: p, ns: x, spec: {podSelector: {}}}
    probes:
    - {port: 80, protocol: TCP, expect: [{from: '*', to: x/a, allow: false}]}
";

#[test]
fn examples_parse() {
    let f = parse(&file("examples.yaml")).unwrap();
    assert_eq!(f.cases.len(), 8);
}

#[test]
fn upstream_has_all_48_cases_and_they_validate() {
    let f = parse(&file("upstream.yaml")).unwrap();
    assert_eq!(f.cases.len(), 48);
    assert!(f.cases.iter().all(|c| c.source == Source::E2e));
    let by_proto = |p: Protocol| f.cases.iter().filter(|c| c.server_protocols == [p]).count();
    // 42 TCP cases, one of which also serves UDP; 3 UDP and 3 SCTP.
    assert_eq!(by_proto(Protocol::Tcp), 41);
    assert_eq!(by_proto(Protocol::Udp), 3);
    assert_eq!(by_proto(Protocol::Sctp), 3);
    // Names repeat only across the TCP, UDP and SCTP contexts, which the notes then say.
    let mut seen = BTreeMap::<&str, usize>::new();
    for c in &f.cases {
        *seen.entry(&c.name).or_default() += 1;
    }
    for c in &f.cases {
        if seen[c.name.as_str()] > 1 && c.server_protocols != [Protocol::Tcp] {
            assert!(
                c.note.as_deref().unwrap_or("").contains("context"),
                "{}",
                c.name
            );
        }
    }
    assert_eq!(seen.len(), 48 - 6);
}

#[test]
fn ferry_cases_parse() {
    let f = parse(&file("ferry.yaml")).unwrap();
    assert!(f.cases.len() >= 10);
    assert!(f.cases.iter().all(|c| c.source == Source::Derived));
}

/// The lead's eight examples, restated independently in upstream.yaml, mean the same:
/// same pods, ports, policies (after substitution), label effects and expected matrices.
#[test]
fn examples_agree_with_upstream() {
    let examples = parse(&file("examples.yaml")).unwrap();
    let upstream = parse(&file("upstream.yaml")).unwrap();
    let ips: BTreeMap<PodRef, Ipv4Addr> = NAMESPACES
        .iter()
        .flat_map(|ns| POD_NAMES.iter().map(move |p| format!("{ns}/{p}")))
        .enumerate()
        .map(|(i, p)| (pod(&p), Ipv4Addr::new(10, 244, 1, 10 + i as u8)))
        .collect();
    for ex in &examples.cases {
        let up = upstream
            .cases
            .iter()
            .find(|c| c.name == ex.name && c.server_protocols == ex.server_protocols)
            .unwrap_or_else(|| panic!("{} is not in upstream.yaml", ex.name));
        assert_eq!(ex.pods, up.pods, "{}", ex.name);
        assert_eq!(ex.steps.len(), up.steps.len(), "{}", ex.name);
        let mut labels_ex: BTreeMap<PodRef, _> = ex
            .pods
            .iter()
            .map(|p| (p.clone(), Case::initial_pod_labels(p)))
            .collect();
        let mut labels_up = labels_ex.clone();
        for (se, su) in ex.steps.iter().zip(&up.steps) {
            assert_eq!(se.actions.len(), su.actions.len(), "{}", ex.name);
            for (ae, au) in se.actions.iter().zip(&su.actions) {
                match (ae, au) {
                    (Action::Create(a), Action::Create(b))
                    | (Action::Update(a), Action::Update(b)) => {
                        assert_eq!((&a.name, &a.ns), (&b.name, &b.ns), "{}", ex.name);
                        assert_eq!(
                            substitute(&a.spec, &ips).unwrap(),
                            substitute(&b.spec, &ips).unwrap(),
                            "{}",
                            ex.name
                        );
                    }
                    (Action::LabelPod(a), Action::LabelPod(b)) => {
                        a.apply(labels_ex.get_mut(&a.pod).unwrap());
                        b.apply(labels_up.get_mut(&b.pod).unwrap());
                    }
                    (a, b) => assert_eq!(a, b, "{}", ex.name),
                }
            }
            assert_eq!(labels_ex, labels_up, "{}", ex.name);
            for pe in &se.probes {
                let pu = su
                    .probes
                    .iter()
                    .find(|p| (p.port, p.protocol) == (pe.port, pe.protocol))
                    .unwrap_or_else(|| panic!("{}: no probe on {}", ex.name, pe.port));
                assert_eq!(
                    Matrix::expected(&ex.pods, pe),
                    Matrix::expected(&up.pods, pu),
                    "{}",
                    ex.name
                );
            }
        }
    }
}

#[test]
fn matrix_expansion_by_hand() {
    // upstream "should support denying of egress traffic on the client side".
    let f = parse(&file("upstream.yaml")).unwrap();
    let c = f
        .cases
        .iter()
        .find(|c| {
            c.name
                .starts_with("should support denying of egress traffic")
        })
        .unwrap();
    let m = Matrix::expected(&c.pods, &c.steps[0].probes[0]);
    let (xa, ya, yb) = (pod("x/a"), pod("y/a"), pod("y/b"));
    assert_eq!(m.get(&xa, &ya), Some(true));
    assert_eq!(m.get(&xa, &yb), Some(false));
    assert_eq!(m.get(&ya, &xa), Some(true));
    assert_eq!(m.get(&yb, &xa), Some(true));
    assert_eq!(m.get(&ya, &yb), Some(false));
    assert_eq!(m.get(&yb, &ya), Some(false));
    assert_eq!(m.get(&xa, &xa), None, "a pod to itself is ignored");
    assert_eq!(m.get(&xa, &pod("z/c")), None, "not a pod of the case");
    assert_eq!(m.pairs().count(), 6);
    assert_eq!(m.pairs().filter(|(_, _, a)| !a).count(), 3);
    let table = m.to_string();
    assert_eq!(
        table,
        "       x/a  y/a  y/b\n\
         x/a      -    .    X\n\
         y/a      .    -    X\n\
         y/b      .    X    -\n"
    );
}

#[test]
fn later_expect_entries_overwrite_earlier_ones() {
    let ps = pods(&["x/a", "x/b", "x/c", "y/a"]);
    let probe = Probe {
        port: 80,
        protocol: Protocol::Tcp,
        scope: Scope::All,
        expect: vec![
            Expect {
                from: PodSelector::Any,
                to: "x/*".parse().unwrap(),
                allow: false,
            },
            Expect {
                from: "y/*".parse().unwrap(),
                to: "x/b".parse().unwrap(),
                allow: true,
            },
        ],
    };
    let m = Matrix::expected(&ps, &probe);
    let denied: Vec<String> = m
        .pairs()
        .filter(|(_, _, a)| !a)
        .map(|(f, t, _)| format!("{f}>{t}"))
        .collect();
    assert_eq!(
        denied,
        ["x/a>x/b", "x/a>x/c", "x/b>x/a", "x/b>x/c", "x/c>x/a", "x/c>x/b", "y/a>x/a", "y/a>x/c"]
    );
    let mut observed = Matrix::all_allowed(&ps);
    for (f, t, a) in m.pairs() {
        observed.set(f, t, a);
    }
    assert!(m.mismatches(&observed).is_empty());
    observed.set(&pod("y/a"), &pod("x/b"), false);
    assert_eq!(
        m.mismatches(&observed),
        vec![(&pod("y/a"), &pod("x/b"), true)]
    );
    assert!(!observed.set(&pod("z/a"), &pod("x/b"), false));
}

#[test]
fn substitution() {
    let ips = BTreeMap::from([
        (pod("x/b"), Ipv4Addr::new(10, 244, 2, 7)),
        (pod("y/a"), Ipv4Addr::new(172, 31, 0, 9)),
    ]);
    let spec = serde_json::json!({
        "egress": [{"to": [{"ipBlock": {
            "cidr": "${SLASH4_OF:x/b}",
            "except": ["${POD_IP:x/b}/32", "${POD_IP:y/a}/32 and ${SLASH4_OF:y/a}"]
        }}]}],
        "podSelector": {"matchLabels": {"${POD_IP:x/b}": "keys stay"}},
        "n": 3
    });
    let out = substitute(&spec, &ips).unwrap();
    assert_eq!(
        out,
        serde_json::json!({
            "egress": [{"to": [{"ipBlock": {
                "cidr": "0.0.0.0/4",
                "except": ["10.244.2.7/32", "172.31.0.9/32 and 160.0.0.0/4"]
            }}]}],
            "podSelector": {"matchLabels": {"${POD_IP:x/b}": "keys stay"}},
            "n": 3
        })
    );
    let bad = |s: &str| {
        substitute(&serde_json::json!([s]), &ips)
            .unwrap_err()
            .to_string()
    };
    assert!(bad("${POD_IP:x/c}").contains("no address known for pod x/c"));
    assert!(bad("${POD_IP:x/b").contains("without its `}`"));
    assert!(bad("${NODE_IP:x/b}").contains("unknown placeholder \"NODE_IP\""));
    assert!(bad("${POD_IP:q/b}").contains("no address known for pod q/b"));
    assert!(bad("${POD_IP:Q/b}").contains("namespace \"Q\" is not a DNS label"));
    assert!(bad("${POD_IP}").contains("is not ${KIND:ns/pod}"));
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn the_good_case_parses() {
    let f = parse(&one_case(GOOD_BODY)).unwrap();
    assert_eq!(f.cases[0].server_ports, [80, 81]);
    assert_eq!(f.cases[0].server_protocols, [Protocol::Tcp]);
}

#[test]
fn garbage_gets_a_clear_error() {
    let cases = [
        ("cases: [", "not YAML: "),
        ("", "not YAML: the file is empty"),
        (
            "- 1\n- 2",
            "the file must be a mapping with the key `cases`",
        ),
        (
            "cases: 3",
            "at cases: invalid type: integer `3`, expected a sequence",
        ),
        (
            "kases: []",
            "unknown field `kases`, expected `worlds` or `cases`",
        ),
        ("cases: []\n---\ncases: []", "more than one YAML document"),
        ("cases:\n\t- x", "not YAML: "),
        ("cases: []\ncases: []", "duplicated key in mapping"),
        ("cases:\n- {[1]: 2}", "a mapping key must be a scalar"),
        ("cases:\n- name: .nan", "not a finite number"),
        ("cases:\n- 7", "at cases[0]: invalid type: integer `7`"),
        ("cases:\n- name: t", "missing field `source`"),
    ];
    for (text, want) in cases {
        let e = err(text);
        assert!(e.contains(want), "{text:?}: {e}");
    }
}

/// Edits of the good case (replace `from` with `to`) and the parts its error must hold.
fn assert_edit_errors(edits: &[(&str, &str, &[&str])]) {
    for (from, to, wants) in edits {
        assert!(GOOD_BODY.contains(from), "{from}");
        let e = err(&one_case(&GOOD_BODY.replace(from, to)));
        for want in *wants {
            assert!(e.contains(want), "{from} -> {to}: {e}");
        }
    }
}

#[test]
fn a_wrong_type_names_the_case_and_key() {
    assert_edit_errors(&[
        (
            "port: 80",
            "port: eighty",
            &["case 1 (\"t\"): at cases[0].steps[0].probes[0].port: invalid type: string \"eighty\", expected u16"],
        ),
        ("allow: false", "allow: 'no'", &["cases[0].steps[0].probes[0].expect[0].allow: invalid type"]),
        ("port: 80", "port: 70000", &[".port: invalid value: integer `70000`"]),
        ("protocol: TCP", "protocol: ICMP", &["unknown variant `ICMP`"]),
        ("  pods", "  note: [1]\n  pods", &["at cases[0].note: invalid type: sequence"]),
    ]);
}

#[test]
fn an_unknown_field_or_action_is_named() {
    assert_edit_errors(&[
        (
            "  pods",
            "  flavour: x\n  pods",
            &["case 1 (\"t\"): at cases[0]", "unknown field `flavour`"],
        ),
        (
            "- create:",
            "- destroy:",
            &["cases[0].steps[0].actions[0]", "unknown variant `destroy`"],
        ),
        (
            "allow: false}",
            "allow: false, via: svc}",
            &["unknown field `via`"],
        ),
        (
            "ns: x,",
            "ns: x, namespace: y,",
            &["unknown field `namespace`"],
        ),
    ]);
}

#[test]
fn unknown_pods_and_bad_selectors_are_named() {
    assert_edit_errors(&[
        (
            "[x/a, x/b]",
            "[x/a, w/b]",
            &["cases[0].pods[1]", "namespace \"w\""],
        ),
        ("[x/a, x/b]", "[x/a, x/d]", &["pod \"d\" is not one of"]),
        (
            "[x/a, x/b]",
            "[x/a, x/a]",
            &["case 1 (\"t\"): pod x/a is listed twice"],
        ),
        // A selector naming a pod the case does not create.
        (
            "to: x/a",
            "to: y/c",
            &["case 1 (\"t\"), step 1: probe 1: expect selector 'y/c' selects no pod of the case"],
        ),
        (
            "to: x/a",
            "to: 'x/'",
            &["expect[0].to", "is not '*', 'ns/*' or 'ns/pod'"],
        ),
        ("to: x/a", "to: '*/a'", &["expect[0].to"]),
        ("to: x/a", "to: 'q/*'", &["namespace \"q\""]),
    ]);
}

#[test]
fn steps_are_checked_against_the_case() {
    // An action added after the good case's create, and what the error must say.
    let actions = [
        (
            "label_pod: {pod: y/a, add: {k: v}}",
            "case 1 (\"t\"), step 1: action 2: label_pod: the case has no pod y/a",
        ),
        ("label_pod: {pod: x/a}", "exactly one of `set` and `add`"),
        (
            "label_pod: {pod: x/a, set: {}, add: {}}",
            "exactly one of `set` and `add`",
        ),
        (
            "label_namespace: {ns: w, add: {k: v}}",
            "action 2: namespace \"w\"",
        ),
        (
            "label_namespace: {ns: y, set: {k: v}}",
            "unknown field `set`",
        ),
        (
            "create: {name: p, ns: x, spec: {}}",
            "action 2: create: policy x/p exists already",
        ),
        (
            "update: {name: q, ns: x, spec: {}}",
            "update: there is no policy x/q",
        ),
        (
            "delete_all_policies: {}\n    - update: {name: p, ns: x, spec: {}}",
            "action 3: update: there is no policy x/p",
        ),
        ("delete_all_policies: {now: true}", "unknown field `now`"),
        (
            "create: {name: Bad_Name, ns: x, spec: {}}",
            "not a DNS subdomain name",
        ),
        (
            "create: {name: q, ns: x, spec: [1]}",
            "spec is not a mapping",
        ),
        (
            "create: {name: q, ns: x, spec: {podSelector: {}, ingress: [{form: []}]}}",
            "policy x/q: spec.ingress[0].form is not a key of a NetworkPolicySpec",
        ),
        (
            "create: {name: q, ns: x, spec: {podSelector: {matchLabel: {pod: a}}}}",
            "spec.podSelector.matchLabel is not a key",
        ),
        (
            "create: {name: q, ns: x, spec: {podSelector: {}, ingress: [{ports: 80}]}}",
            "spec is not a NetworkPolicySpec: invalid type: integer `80`",
        ),
        (
            "create: {name: q, ns: x, spec: {egress: [{to: [{ipBlock: {cidr: '${POD_IP:y/a}/32'}}]}]}}",
            "names pod y/a, which the case does not create",
        ),
        (
            "create: {name: q, ns: x, spec: {egress: [{to: [{ipBlock: {cidr: '${HOST:x/a}'}}]}]}}",
            "unknown placeholder \"HOST\"",
        ),
    ];
    for (action, want) in actions {
        let text =
            one_case(&GOOD_BODY.replace("    probes:", &format!("    - {action}\n    probes:")));
        let e = err(&text);
        assert!(e.contains(want), "{action}: {e}");
    }
    // The case itself and its probes.
    assert_edit_errors(&[
        (
            "port: 80",
            "port: 82",
            &["probe 1: port 82 is not in server_ports [80, 81]"],
        ),
        (
            "protocol: TCP",
            "protocol: UDP",
            &["protocol UDP is not in server_protocols"],
        ),
        (
            "  pods",
            "  server_ports: [0]\n  pods",
            &["server_ports [0]"],
        ),
    ]);
    let e = err(&one_case("  pods: [x/a]\n  steps: []\n"));
    assert!(e.contains("`steps` is empty"), "{e}");
}

#[test]
fn label_pod_apply() {
    let mut l = Case::initial_pod_labels(&pod("x/b"));
    LabelPod {
        pod: pod("x/b"),
        set: None,
        add: Some(BTreeMap::from([("pod2".into(), "updated".into())])),
    }
    .apply(&mut l);
    assert_eq!(l.len(), 2);
    LabelPod {
        pod: pod("x/b"),
        set: Some(BTreeMap::from([("k".into(), "v".into())])),
        add: None,
    }
    .apply(&mut l);
    assert_eq!(l, BTreeMap::from([("k".into(), "v".into())]));
    assert_eq!(Protocol::Sctp.port_name(81), "serve-81-sctp");
    let mut n = Case::initial_namespace_labels("y");
    LabelNamespace {
        ns: "y".into(),
        add: BTreeMap::from([("ns2".into(), "updated".into())]),
    }
    .apply(&mut n);
    assert_eq!(n["ns2"], "updated");
    assert_eq!(n["kubernetes.io/metadata.name"], "y");
}

#[test]
fn read_names_the_file() {
    let e = read(std::path::Path::new("/nonexistent/cases.yaml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("reading /nonexistent/cases.yaml: "),
        "{e}"
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("netpol/ferry.yaml");
    assert!(!read(&path).unwrap().cases.is_empty());
}

// ---- ClusterNetworkPolicy cases: worlds, new actions, scope, features.

const WORLD: &str = "worlds:
  w:
    services: false
    denied: timeout
    node_labels: {kubernetes.io/os: linux}
    namespaces:
      ns-a: {labels: {house: a}}
      ns-b: {labels: {house: b}}
    pods:
      ns-a/p0:
        labels: {house: a}
        ports:
        - {port: 80, protocol: TCP, name: web}
        - {port: 53, protocol: UDP}
      ns-b/p1:
        labels: {house: b}
        ports:
        - {port: 80, protocol: TCP, name: web}
        - {port: 53, protocol: UDP, name: dns}
      ns-b/h0:
        labels: {house: b}
        host_network: true
        ports:
        - {port: 34345, protocol: TCP}
";

const WORLD_CASE: &str = "cases:
- name: t
  source: npa-conformance conformance/tests/x.go:T/sub
  features: [ClusterNetworkPolicy]
  world: w
  pods: [ns-a/p0, ns-b/p1]
  steps:
  - actions:
    - create_cnp:
        name: c
        spec:
          tier: Admin
          priority: 3
          subject: {namespaces: {}}
          egress:
          - {name: r, action: Deny, to: [{networks: ['${POD_IP:ns-b/p1}/32']}]}
    probes:
    - port: 80
      protocol: TCP
      scope: listed
      expect:
      - {from: ns-a/p0, to: ns-b/p1, allow: false}
";

fn world_file(edit: (&str, &str)) -> String {
    let text = format!("{WORLD}{WORLD_CASE}");
    assert!(text.contains(edit.0), "{}", edit.0);
    text.replacen(edit.0, edit.1, 1)
}

#[test]
fn cnp_examples_parse() {
    let f = parse(&file("cnp-examples.yaml")).unwrap();
    assert_eq!(f.cases.len(), 6);
    let w = &f.worlds["npa-conformance"];
    assert!(!w.services);
    assert_eq!(w.denied, Denied::Timeout);
    assert_eq!(w.node_labels["kubernetes.io/os"], "linux");
    assert_eq!(w.namespaces.len(), 5);
    assert_eq!(w.pods.values().filter(|p| p.host_network).count(), 2);
    for c in &f.cases {
        assert!(matches!(c.source, Source::NpaConformance(_)), "{}", c.name);
        assert_eq!(c.world_spec.as_ref(), Some(w), "{}", c.name);
        assert!(c.server_ports.is_empty() && c.server_protocols.is_empty());
        assert!(c.unclaimed_features(&claimed()).is_empty(), "{}", c.name);
        for p in c.steps.iter().flat_map(|s| &s.probes) {
            assert_eq!(p.scope, Scope::Listed);
        }
    }
    let labels = w.namespace_labels("network-policy-conformance-gryffindor");
    assert_eq!(labels.len(), 2);
    assert_eq!(
        labels["kubernetes.io/metadata.name"],
        "network-policy-conformance-gryffindor"
    );
}

fn claimed() -> Vec<String> {
    CLAIMED_FEATURES.iter().map(|f| f.to_string()).collect()
}

#[test]
fn a_world_case_parses_and_listed_probes_only_their_pairs() {
    let f = parse(&world_file(("", ""))).unwrap();
    let c = &f.cases[0];
    assert_eq!(
        c.source.to_string(),
        "npa-conformance conformance/tests/x.go:T/sub"
    );
    let m = Matrix::expected(&c.pods, &c.steps[0].probes[0]);
    assert_eq!(
        m.pairs().collect::<Vec<_>>(),
        vec![(&pod("ns-a/p0"), &pod("ns-b/p1"), false)]
    );
    assert_eq!(m.get(&pod("ns-b/p1"), &pod("ns-a/p0")), None, "not listed");
    // The model still means what it meant, and an inline world works as a named one.
    let inline = world_file(("  world: w\n", "")).replace("cases:\n", "");
    let body = inline.split_once("- name: t").unwrap().1;
    let world_yaml = WORLD.replace("worlds:\n  w:\n", "");
    let indented: String = world_yaml.lines().map(|l| format!("  {l}\n")).collect();
    let text = format!("cases:\n- name: t\n  world:\n{indented}{}", body);
    let f2 = parse(&text).unwrap();
    assert_eq!(f2.cases[0].world_spec, f.cases[0].world_spec);
    // The model as a world: x, y, z with `ns=`, a, b, c with `pod=`, named ports.
    let model = WorldSpec::model(&[80, 81], &[Protocol::Tcp, Protocol::Udp]);
    assert_eq!(model.pods.len(), 9);
    assert_eq!(
        model.namespace_labels("y"),
        Case::initial_namespace_labels("y")
    );
    let a = &model.pods[&pod("x/a")];
    assert_eq!(a.labels, Case::initial_pod_labels(&pod("x/a")));
    assert_eq!(a.ports.len(), 4);
    assert_eq!(a.ports[0].name.as_deref(), Some("serve-80-tcp"));
    assert_eq!(a.ports[3].name.as_deref(), Some("serve-81-udp"));
}

#[test]
fn world_mistakes_are_named() {
    let edits: &[((&str, &str), &str)] = &[
        (("  world: w\n", "  world: v\n"), "case 1 (\"t\"): world \"v\" is not declared under `worlds`"),
        (("  world: w\n", "  world: w\n  server_ports: [80]\n"), "`server_ports` is not allowed in a case with a world"),
        (("  world: w\n", "  world: w\n  server_protocols: [UDP]\n"), "`server_protocols` is not allowed"),
        (("pods: [ns-a/p0, ns-b/p1]", "pods: [ns-a/p0, ns-c/p1]"), "at cases[0].pods[1]: pod ns-c/p1 is not one of the world's pods"),
        (("pods: [ns-a/p0, ns-b/p1]", "pods: [ns-a/p0, x/a]"), "pod x/a is not one of the world's pods"),
        (("to: ns-b/p1, allow", "to: 'ns-c/*', allow"), "expect selector 'ns-c/*': namespace \"ns-c\" is not one of the world's (ns-a, ns-b)"),
        (("to: ns-b/p1, allow", "to: ns-b/h0, allow"), "expect selector 'ns-b/h0' selects no pod of the case"),
        (("port: 80\n      protocol: TCP", "port: 8080\n      protocol: TCP"), "probe 1: pod ns-b/p1 does not serve 8080/TCP"),
        (("${POD_IP:ns-b/p1}", "${POD_IP:ns-b/h0}"), "a placeholder names pod ns-b/h0, which the case does not create"),
        (("      expect:\n      - {from: ns-a/p0, to: ns-b/p1, allow: false}\n", "      expect: []\n"), "no pair to probe"),
        (("tier: Admin", "tier: Root"), "ClusterNetworkPolicy c: spec.tier Some(\"Root\") is not Admin or Baseline"),
        (("priority: 3", "priority: 3000"), "spec.priority must be an integer from 0 to 1000"),
        (("action: Deny", "action: Drop"), "spec.egress[0].action Some(\"Drop\") is not Accept, Deny or Pass"),
        (("action: Deny, to:", "action: Deny, from:"), "spec.egress[0].from is not a key of a ClusterNetworkPolicySpec"),
        (("subject: {namespaces: {}}", "subjects: {namespaces: {}}"), "spec.subjects is not a key"),
        (("    - create_cnp:", "    - delete_cnp: {name: c}\n    - create_cnp:"), "action 1: delete_cnp: there is no ClusterNetworkPolicy c"),
        (("    - create_cnp:", "    - update_cnp: {name: c, spec: {tier: Admin, priority: 1, subject: {namespaces: {}}}}\n    - create_cnp:"), "update_cnp: there is no ClusterNetworkPolicy c"),
        (("    - create_cnp:", "    - delete: {name: np, ns: ns-a}\n    - create_cnp:"), "delete: there is no policy ns-a/np"),
        (("    - create_cnp:", "    - create: {name: np, ns: ns-z, spec: {podSelector: {}}}\n    - create_cnp:"), "namespace \"ns-z\" is not one of the world's"),
        (("    - create_cnp:", "    - label_namespace: {ns: x, add: {k: v}}\n    - create_cnp:"), "namespace \"x\" is not one of the world's"),
        (("features: [ClusterNetworkPolicy]", "features: [cnp]"), "features: \"cnp\" is not a feature's name"),
        (("features: [ClusterNetworkPolicy]", "features: [A, A]"), "features: A is listed twice"),
        (("scope: listed", "scope: some"), "unknown variant `some`, expected `all` or `listed`"),
        (("source: npa-conformance conformance/tests/x.go:T/sub", "source: npa-conformance "), "unknown source"),
        (("denied: timeout", "denied: reset"), "at worlds.w.denied: unknown variant `reset`"),
        (("services: false", "services: no"), "at worlds.w.services: invalid type"),
        (("      ns-b/h0:", "      ns-q/h0:"), "world \"w\": pod ns-q/h0: namespace \"ns-q\" is not one of the world's namespaces"),
        (("      ns-b/h0:", "      nsb:"), "at worlds.w.pods.nsb: pod \"nsb\" is not of the form ns/pod"),
        (("{port: 53, protocol: UDP}", "{port: 53, protocol: UDP, name: web}"), "pod ns-a/p0: ports[1]: port name \"web\" is used twice"),
        (("{port: 53, protocol: UDP}", "{port: 80, protocol: TCP}"), "pod ns-a/p0: ports[1]: 80/TCP is listed twice"),
        (("{port: 53, protocol: UDP}", "{port: 53, protocol: UDP, name: Domain_Name}"), "is not an IANA service name"),
        (("{port: 53, protocol: UDP}", "{port: 0, protocol: UDP}"), "port 0 is not a port"),
        (("{port: 53, protocol: UDP}", "{port: 53, proto: UDP}"), "at worlds.w.pods.ns-a/p0.ports[1].proto: unknown field `proto`"),
        (("ns-a: {labels: {house: a}}", "ns-a: {labels: {kubernetes.io/metadata.name: other}}"), "the API server sets it"),
        (("ns-a: {labels: {house: a}}", "ns-a: {labels: {'bad key!': a}}"), "\"bad key!\" is not a label key"),
        (("      ns-a: {labels: {house: a}}\n      ns-b: {labels: {house: b}}\n", "      {}\n"), "world \"w\": `namespaces` is empty"),
    ];
    for ((from, to), want) in edits {
        let e = err(&world_file((from, to)));
        assert!(e.contains(want), "{from} -> {to}: {e}");
    }
    // Four host-network pods serving one port cannot be on three nodes.
    let host = "      ns-b/h0:\n        labels: {house: b}\n        host_network: true\n        ports:\n        - {port: 34345, protocol: TCP}\n";
    let more: String = (1..4)
        .map(|i| host.replace("h0", &format!("h{i}")))
        .collect();
    let e = err(&world_file((host, &format!("{host}{more}"))));
    assert!(e.contains("4 host-network pods serve 34345/TCP"), "{e}");
    let e = err(&world_file(("  world: w\n", "  world: [w]\n")));
    assert!(
        e.contains("at cases[0].world: invalid type: sequence, expected a world's name or a world"),
        "{e}"
    );
    let e = err(&world_file((
        "  world: w\n",
        "  world: {namespaces: {}, pods: {}}\n",
    )));
    assert!(
        e.contains("case 1 (\"t\"): world: `namespaces` is empty"),
        "{e}"
    );
}

#[test]
fn model_cases_still_refuse_world_only_things() {
    // `scope: listed` and the new actions work in the model too; a world's pod does not.
    let listed = one_case(&GOOD_BODY.replace(
        "{port: 80, protocol: TCP,",
        "{port: 80, protocol: TCP, scope: listed,",
    ));
    let f = parse(&listed).unwrap();
    let m = Matrix::expected(&f.cases[0].pods, &f.cases[0].steps[0].probes[0]);
    assert_eq!(m.pairs().count(), 1);
    let with_delete = one_case(&GOOD_BODY.replace(
        "    probes:",
        "    - delete: {name: p, ns: x}\n    - create_cnp: {name: c, spec: {tier: Baseline, priority: 0, subject: {namespaces: {}}}}\n    - delete_all_policies: {}\n    probes:",
    ));
    parse(&with_delete).unwrap();
    let e = err(&one_case(
        &GOOD_BODY.replace("[x/a, x/b]", "[x/a, ns-a/p0]"),
    ));
    assert!(
        e.contains("namespace \"ns-a\" is not one of [\"x\", \"y\", \"z\"]"),
        "{e}"
    );
}

/// Garbage of every kind gets an error, never a panic: truncations of real files, and
/// bytes flipped in them.
#[test]
fn garbage_case_files_never_panic() {
    let mut texts = vec![
        file("cnp-examples.yaml"),
        file("examples.yaml"),
        format!("{WORLD}{WORLD_CASE}"),
    ];
    let junk = [
        "worlds: 3\ncases: []",
        "worlds: {w: 3}\ncases: []",
        "worlds: {w: {namespaces: 1, pods: 2}}\ncases: []",
        "worlds: {w: {namespaces: {a: {labels: 1}}, pods: {a/b: {ports: [{port: -1}]}}}}\ncases: []",
        "cases:\n- {name: t, source: e2e, world: {}, pods: [], steps: []}",
        "cases:\n- {name: t, source: e2e, world: 7, pods: [], steps: []}",
        "cases:\n- {name: t, source: e2e, pods: [a/b], steps: [{actions: [{create_cnp: 1}]}]}",
        "cases:\n- {name: t, source: e2e, pods: [x/a], steps: [{actions: [{create_cnp: {name: c, spec: [1]}}]}]}",
        "cases:\n- {name: t, source: e2e, pods: [x/a], steps: [{actions: [{create_cnp: {name: c, spec: {tier: Admin, priority: 1, subject: {}, ingress: [1]}}}]}]}",
        "cases:\n- {name: t, source: e2e, pods: [x/a], steps: [{actions: [{create_cnp: {name: c, spec: {tier: Admin, priority: 1, subject: {}, ingress: 'x'}}}]}]}",
        "cases:\n- {name: t, source: e2e, pods: [x/a], steps: [{actions: [{create_cnp: {name: c, spec: {a: '${POD_IP:'}}}]}]}",
    ];
    texts.extend(junk.iter().map(|s| s.to_string()));
    let mut n = 0;
    for text in &texts {
        for cut in (0..text.len()).step_by(397).chain([text.len()]) {
            if let Some(t) = text.get(..cut) {
                let _ = parse(t);
                n += 1;
            }
        }
        for (i, b) in text.bytes().enumerate().step_by(211) {
            let flipped = match b {
                b':' => " ",
                b'-' => ":",
                b' ' => "\t",
                b'[' => "{",
                _ => "}",
            };
            let mut t = text.clone();
            if t.is_char_boundary(i) && t.is_char_boundary(i + 1) {
                t.replace_range(i..i + 1, flipped);
                let _ = parse(&t);
                n += 1;
            }
        }
    }
    assert!(n > 100);
    for j in junk {
        assert!(parse(j).is_err(), "{j}");
    }
}
