//! Every case of every file of `tests/netpol/` against ferry's reference evaluator
//! (`ferry_netpol::verdict_at`), world and ClusterNetworkPolicies included: what a case
//! expects is what the evaluator says (no root, no kernel). A case needing a feature
//! ferry does not claim is left out, and counted.

use std::path::PathBuf;

use ferry_tests::netpol::cases::{self, CLAIMED_FEATURES};
use ferry_tests::netpol::oracle;

fn case_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("netpol");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_case_agrees_with_the_evaluator() {
    let claimed: Vec<String> = CLAIMED_FEATURES.iter().map(|f| f.to_string()).collect();
    let files = case_files();
    assert!(
        files.iter().any(|f| f.ends_with("cnp-examples.yaml")),
        "{files:?}"
    );
    let mut problems = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let file = cases::read(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (mut agreed, mut skipped, mut pairs) = (0, 0, 0);
        for (i, case) in file.cases.iter().enumerate() {
            if !case.unclaimed_features(&claimed).is_empty() {
                skipped += 1;
                continue;
            }
            let judged = match oracle::judge(case) {
                Ok(j) => j,
                Err(e) => {
                    problems.push(format!("{name} case {} ({:?}): {e}", i + 1, case.name));
                    continue;
                }
            };
            let mut ok = true;
            for j in &judged {
                pairs += j.expected.pairs().count();
                for (from, to, why) in &j.disagreements {
                    ok = false;
                    problems.push(format!(
                        "{name} case {} ({:?}) step {} probe {}/{}: {from} -> {to}: the case expects {}, the evaluator says {why}",
                        i + 1,
                        case.name,
                        j.step,
                        j.port,
                        j.protocol.as_str(),
                        if j.expected.get(from, to) == Some(true) { "allowed" } else { "denied" },
                    ));
                }
            }
            if ok {
                agreed += 1;
            }
        }
        println!(
            "{name}: {agreed} agree, {} disagree, {skipped} skipped (features); {pairs} pairs judged",
            file.cases.len() - agreed - skipped
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The oracle is no rubber stamp: a case expecting what the policies do not say
/// disagrees, naming the pair and the rule that decided.
#[test]
fn a_wrong_expectation_disagrees_and_is_explained() {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("netpol/cnp-examples.yaml"),
    )
    .unwrap();
    // The first case expects cedric-diggory-0 -> harry-potter-1 on 80 allowed (an Accept).
    let wrong = text.replacen(
        "to: network-policy-conformance-gryffindor/harry-potter-1, allow: true}",
        "to: network-policy-conformance-gryffindor/harry-potter-1, allow: false}",
        1,
    );
    assert_ne!(wrong, text);
    let file = cases::parse(&wrong).unwrap();
    let judged = oracle::judge(&file.cases[0]).unwrap();
    let d: Vec<_> = judged.iter().flat_map(|j| &j.disagreements).collect();
    assert_eq!(d.len(), 1, "{}", d.len());
    assert_eq!(d[0].0.name, "cedric-diggory-0");
    assert!(
        d[0].2.contains("allow-from-hufflepuff-at-port-80"),
        "{}",
        d[0].2
    );
    // The host-network pods sit at their nodes' addresses, on different nodes.
    let world = file.cases[0].world();
    let place = oracle::placement(&world);
    let centaurs: Vec<_> = place
        .iter()
        .filter(|(p, _)| p.name.starts_with("centaur"))
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(centaurs.len(), 2);
    assert_ne!(centaurs[0].0, centaurs[1].0);
    assert_eq!(centaurs[0].1.octets()[..3], [192, 0, 2]);
}
