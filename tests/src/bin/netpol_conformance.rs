//! `ferry-netpol-conformance`: runs NetworkPolicy conformance cases (the format of
//! `tests/netpol/*.yaml`) against ferry on a 3-node cluster of network namespaces, and
//! prints what each probe expected and observed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_tests::interrupt;
use ferry_tests::netpol::cases::{
    self, Action, Case, Denied, Matrix, PodRef, Probe, Protocol, Scope, WorldSpec, CLAIMED_FEATURES,
};
use ferry_tests::netpol::oracle;
use ferry_tests::netpol::probe::Seen;
use ferry_tests::netpol::world::{ProbeJob, World};
use serde_json::{json, Value};

const USAGE: &str = "\
usage: ferry-netpol-conformance --cases FILE [-o table|json] [--timeout SECONDS] [--logs DIR]
                                [--features F1,F2,...]\n       (as root)

Runs NetworkPolicy and ClusterNetworkPolicy conformance cases (format:
tests/netpol/README.md; files: tests/netpol/{examples,ferry,upstream,cnp-*}.yaml)
against ferry: a 3-node cluster of network namespaces with a real etcd, ferry-overlayd
--network-policy on each node watching a Kubernetes API stand-in (node.json then says
networkPolicy, so every ADD waits until the new pod is covered).

A world is built once for all the cases that run in it. The x/y/z model: namespaces x, y,
z and pods a, b, c in each (all nine, whatever the cases list), spread over the nodes,
each with a ClusterIP Service s-<ns>-<pod> (kube-proxy-style iptables rules) and servers
on every port and protocol any model case of the file uses (its container ports name them
all). A declared world (`world:`): its namespaces (their labels and
kubernetes.io/metadata.name), its pods (their labels, their ports, named ones as
containerPorts; host_network ones in their node's namespace at its address), a Service per
pod unless `services: false`, and every Node object labelled with its `node_labels`. For
each case: reset (every policy and ClusterNetworkPolicy deleted, every pod and namespace
label back to its first value, then waited for until the pairs the case probes reach each
other again), then each step's actions through the API, then the probes, polled until they
match the expected matrix or --timeout passes (default 10; a probe waits 500 ms for its
answer); at its end every ClusterNetworkPolicy is deleted. Only the case's pods are probed
(with `scope: listed` only the pairs its expect entries name); the others exist and are
left alone. Each probe goes from every pod of the case to every other, to the pod IP and,
with Services, to its Service's ClusterIP. In a world with `denied: timeout`, a refusal
(TCP RST, ICMP unreachable, SCTP ABORT) of a probe is a failure, shown 'R'.

Features: a case whose `features:` names one ferry does not claim is skipped (and
counted so). ferry claims ClusterNetworkPolicy, ClusterNetworkPolicyNamedPorts and
ClusterNetworkPolicyEgressNodePeers; --features F1,F2,... claims exactly those instead
(--features '' claims none).

Protocols: TCP is a connect; UDP a datagram echoed back. SCTP: the kernel may have no
SCTP stack, so the client sends a well-formed SCTP INIT (correct CRC32c) from a raw IP
socket and the server pod counts INITs arriving for that port on a raw IPPROTO_SCTP
socket: this proves whether the first packet of an association passes the rules, and
nothing after it.

Output (-o table, the default): per probe the expected matrix and the observed ones (to
the pod IP, to the ClusterIP), rows = clients, columns = servers, '.' allowed, 'X'
denied, '-' self; a mismatch is shown as '!' after the observed mark. The last line is
'N passed, N failed, N skipped' (cases). -o json: one JSON document on stdout, that line on
stderr. Pods with long names are numbered in the tables (the legend precedes them);
a `scope: listed` probe is a list of its pairs. Under a failed case, each wrong pair gets
what ferry's reference evaluator says of it (ferry_netpol::verdict_at, with the pods'
real addresses): whether it agrees with the case, and the rule that decided.
--logs DIR: each node's ferry-overlayd log is copied to DIR/<node>.log at the end.

Exit: 0 every case passed; 1 a case failed (or the cluster could not be built);
2 the file cannot be read or parsed (the message names the case and the key), or a
bad argument. Ctrl-C stops at the next step and removes everything made.";

#[derive(Clone, Copy, PartialEq)]
enum Output {
    Table,
    Json,
}

struct Args {
    cases: PathBuf,
    output: Output,
    timeout: Duration,
    logs: Option<PathBuf>,
    /// The conformance features claimed.
    features: Vec<String>,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut cases = None;
    let mut output = Output::Table;
    let mut timeout = Duration::from_secs(10);
    let mut logs = None;
    let mut features: Vec<String> = CLAIMED_FEATURES.iter().map(|f| f.to_string()).collect();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "--cases" => cases = Some(PathBuf::from(value("--cases")?)),
            "--logs" => logs = Some(PathBuf::from(value("--logs")?)),
            "--features" => {
                features = value("--features")?
                    .split(',')
                    .map(str::trim)
                    .filter(|f| !f.is_empty())
                    .map(String::from)
                    .collect();
            }
            "-o" | "--output" => {
                output = match value("-o")?.as_str() {
                    "table" => Output::Table,
                    "json" => Output::Json,
                    other => return Err(format!("-o {other}: expected table or json")),
                }
            }
            "--timeout" => {
                let v = value("--timeout")?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 600.0)
                    .ok_or_else(|| format!("--timeout {v}: expected seconds, 0 to 600"))?;
                timeout = Duration::from_secs_f64(secs);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let cases = cases.ok_or("--cases FILE is required")?;
    Ok(Some(Args {
        cases,
        output,
        timeout,
        logs,
        features,
    }))
}

/// What one probe of one step expected and observed.
struct ProbeOutcome {
    step: usize,
    port: u16,
    protocol: Protocol,
    scope: Scope,
    expected: Matrix,
    observed: Observed,
    /// Whether a refusal fails the probe (`denied: timeout`).
    strict: bool,
    /// From the end of the step's actions to the last probe round.
    waited: Duration,
    /// Rounds of probes until it matched (or the timeout).
    rounds: usize,
}

/// One round's observations of one probe.
struct Observed {
    to_pod: Matrix,
    /// Without Services, none.
    to_service: Option<Matrix>,
    /// The pairs whose probe was refused, to the pod IP and to the ClusterIP.
    refused_pod: BTreeSet<(PodRef, PodRef)>,
    refused_service: BTreeSet<(PodRef, PodRef)>,
}

impl Observed {
    /// Whether it is what `expected` says; with `strict`, no refusal either.
    fn matches(&self, expected: &Matrix, strict: bool) -> bool {
        expected.mismatches(&self.to_pod).is_empty()
            && self
                .to_service
                .as_ref()
                .is_none_or(|s| expected.mismatches(s).is_empty())
            && (!strict || (self.refused_pod.is_empty() && self.refused_service.is_empty()))
    }
}

impl ProbeOutcome {
    fn passed(&self) -> bool {
        self.observed.matches(&self.expected, self.strict)
    }
}

struct CaseOutcome {
    name: String,
    probes: Vec<ProbeOutcome>,
    /// An action the API refused, or a reset that did not take.
    error: Option<String>,
    /// Why the case was not run (a feature ferry does not claim).
    skipped: Option<String>,
    /// For each wrong observation, what the reference evaluator says of that pair.
    explained: Vec<String>,
    /// Until the reset took effect.
    reset: Duration,
    took: Duration,
}

impl CaseOutcome {
    fn passed(&self) -> bool {
        self.skipped.is_none()
            && self.error.is_none()
            && self.probes.iter().all(ProbeOutcome::passed)
    }

    fn verdict(&self) -> &'static str {
        match (&self.skipped, self.passed()) {
            (Some(_), _) => "SKIP",
            (None, true) => "PASS",
            (None, false) => "FAIL",
        }
    }
}

/// How long each probe waits for its answer; a denied probe costs this much per round.
const PROBE_WAIT: Duration = Duration::from_millis(500);
/// The shortest time between the starts of two rounds.
const MIN_ROUND: Duration = Duration::from_millis(50);
/// How long after the actions the first round of probes starts.
const SETTLE: Duration = Duration::from_millis(150);

fn main() {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("ferry-netpol-conformance: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let file = match cases::read(&args.cases) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ferry-netpol-conformance: {}: {e}", args.cases.display());
            std::process::exit(2);
        }
    };
    if !ferry_tests::is_root() {
        eprintln!("ferry-netpol-conformance needs root (it makes network namespaces)");
        std::process::exit(2);
    }
    interrupt::install();
    std::panic::set_hook(Box::new(|info| {
        if !interrupt::interrupted() {
            eprintln!("\nferry-netpol-conformance: {info}");
        }
    }));
    let run = std::panic::catch_unwind(AssertUnwindSafe(|| run(&args, &file.cases)));
    match run {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(_) if interrupt::interrupted() => {
            eprintln!("interrupted: everything made is removed");
            std::process::exit(130);
        }
        Err(_) => {
            eprintln!("ferry-netpol-conformance: the run stopped (the message above says why)");
            std::process::exit(1);
        }
    }
}

/// The cases of a file by the world they run in, in the order each world first
/// appears: every model case in one model world (serving every port and protocol any of
/// them uses), each declared world once.
fn group_by_world(cases: &[Case]) -> Vec<(WorldSpec, Vec<usize>)> {
    let model_ports: BTreeSet<u16> = cases
        .iter()
        .filter(|c| !c.in_world())
        .flat_map(|c| c.server_ports.clone())
        .collect();
    let model_protocols: BTreeSet<Protocol> = cases
        .iter()
        .filter(|c| !c.in_world())
        .flat_map(|c| c.server_protocols.clone())
        .collect();
    let model = WorldSpec::model(
        &model_ports.into_iter().collect::<Vec<_>>(),
        &model_protocols.into_iter().collect::<Vec<_>>(),
    );
    let mut groups: Vec<(WorldSpec, Vec<usize>)> = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let spec = match &case.world_spec {
            Some(w) => w.clone(),
            None => model.clone(),
        };
        match groups.iter_mut().find(|(w, _)| *w == spec) {
            Some((_, members)) => members.push(i),
            None => groups.push((spec, vec![i])),
        }
    }
    groups
}

/// Builds each world, runs its cases; true when none failed.
fn run(args: &Args, cases: &[Case]) -> bool {
    let start = Instant::now();
    let mut outcomes: BTreeMap<usize, CaseOutcome> = BTreeMap::new();
    let mut logs_saved = false;
    for (spec, members) in group_by_world(cases) {
        interrupt::stop_if_interrupted();
        let (to_run, to_skip): (Vec<usize>, Vec<usize>) = members
            .iter()
            .partition(|&&i| cases[i].unclaimed_features(&args.features).is_empty());
        for i in to_skip {
            let case = &cases[i];
            let outcome = CaseOutcome {
                name: case.name.clone(),
                probes: Vec::new(),
                error: None,
                skipped: Some(format!(
                    "needs {}, which ferry does not claim (--features)",
                    case.unclaimed_features(&args.features).join(", ")
                )),
                explained: Vec::new(),
                reset: Duration::ZERO,
                took: Duration::ZERO,
            };
            report(args, i, cases.len(), case, &outcome);
            outcomes.insert(i, outcome);
        }
        if to_run.is_empty() {
            continue;
        }
        let t = Instant::now();
        let host = spec.pods.values().filter(|p| p.host_network).count();
        eprintln!(
            "building a world: 3 nodes, {} namespaces, {} pods ({host} host-network), {}",
            spec.namespaces.len(),
            spec.pods.len(),
            if spec.services {
                "Services"
            } else {
                "no Services"
            }
        );
        let mut progress = |step: &str| {
            eprintln!("  {step}");
            interrupt::stop_if_interrupted();
        };
        let mut world = if cases[to_run[0]].in_world() {
            World::declared(&spec, &mut progress)
        } else {
            let ports: BTreeSet<u16> = spec
                .pods
                .values()
                .flat_map(|p| p.ports.iter().map(|s| s.port))
                .collect();
            let protocols: BTreeSet<Protocol> = spec
                .pods
                .values()
                .flat_map(|p| p.ports.iter().map(|s| s.protocol))
                .collect();
            World::new(
                &ports.into_iter().collect::<Vec<_>>(),
                &protocols.into_iter().collect::<Vec<_>>(),
                &mut progress,
            )
        };
        eprintln!("world ready in {:.1?}", t.elapsed());
        for i in to_run {
            interrupt::stop_if_interrupted();
            let outcome = run_case(&mut world, &cases[i], args.timeout);
            report(args, i, cases.len(), &cases[i], &outcome);
            outcomes.insert(i, outcome);
        }
        if let Some(dir) = &args.logs {
            save_logs(&world, dir, logs_saved);
            logs_saved = true;
        }
    }
    let outcomes: Vec<CaseOutcome> = outcomes.into_values().collect();
    let skipped = outcomes.iter().filter(|o| o.skipped.is_some()).count();
    let passed = outcomes.iter().filter(|o| o.passed()).count();
    let failed = outcomes.len() - passed - skipped;
    let summary = format!("{passed} passed, {failed} failed, {skipped} skipped");
    match args.output {
        Output::Table => {
            println!("total {:.1?}", start.elapsed());
            println!("{summary}");
        }
        Output::Json => {
            let doc = json!({
                "file": args.cases.display().to_string(),
                "passed": passed,
                "failed": failed,
                "skipped": skipped,
                "features": args.features,
                "seconds": start.elapsed().as_secs_f64(),
                "cases": outcomes.iter().map(case_json).collect::<Vec<_>>(),
            });
            println!("{doc:#}");
            eprintln!("{summary}");
        }
    }
    failed == 0
}

/// One case's result as it comes: its table (`-o table`) or a line on stderr.
fn report(args: &Args, i: usize, n: usize, case: &Case, outcome: &CaseOutcome) {
    if args.output == Output::Table {
        print!("{}", render_case(i + 1, n, case, outcome));
    } else {
        eprintln!("case {}/{n} {}: {}", i + 1, case.name, outcome.verdict());
    }
}

/// Copies each node's daemon log to `dir/<node>.log` (the originals go with the world);
/// a later world's logs are added to the same files.
fn save_logs(world: &World, dir: &std::path::Path, append: bool) {
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("--logs {}: {e}", dir.display());
        return;
    }
    for n in &world.cluster.nodes {
        let to = dir.join(format!("{}.log", n.name));
        let r = std::fs::read(n.log_path()).and_then(|log| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(append)
                .write(true)
                .truncate(!append)
                .open(&to)?;
            std::io::Write::write_all(&mut f, &log)
        });
        match r {
            Ok(()) => eprintln!("daemon log of {}: {}", n.name, to.display()),
            Err(e) => eprintln!("copy {} to {}: {e}", n.log_path().display(), to.display()),
        }
    }
}

fn run_case(world: &mut World, case: &Case, timeout: Duration) -> CaseOutcome {
    let start = Instant::now();
    let mut outcome = CaseOutcome {
        name: case.name.clone(),
        probes: Vec::new(),
        error: None,
        skipped: None,
        explained: Vec::new(),
        reset: Duration::ZERO,
        took: Duration::ZERO,
    };
    let strict = world.spec().denied == Denied::Timeout;
    let reset_result = reset(world, case, timeout);
    outcome.reset = start.elapsed();
    if let Err((e, probes)) = reset_result {
        outcome.error = Some(e);
        outcome.probes = probes;
        outcome.took = start.elapsed();
        return outcome;
    }
    for (s, step) in case.steps.iter().enumerate() {
        interrupt::stop_if_interrupted();
        if let Err(e) = apply(world, &step.actions) {
            outcome.error = Some(format!("step {}: {e}", s + 1));
            break;
        }
        let t = Instant::now();
        let expected: Vec<Matrix> = step
            .probes
            .iter()
            .map(|p| Matrix::expected(&case.pods, p))
            .collect();
        let (observed, rounds) = poll(world, &step.probes, &expected, timeout, strict);
        for ((probe, expected), observed) in step.probes.iter().zip(expected).zip(observed) {
            outcome.probes.push(ProbeOutcome {
                step: s + 1,
                port: probe.port,
                protocol: probe.protocol,
                scope: probe.scope,
                expected,
                observed,
                strict,
                waited: t.elapsed(),
                rounds,
            });
        }
    }
    // A case starts with no ClusterNetworkPolicy, and leaves none.
    if let Err(e) = world.delete_all_cnps() {
        outcome.error.get_or_insert(e);
    }
    if !outcome.passed() {
        outcome.explained = explain(world, case, &outcome);
    }
    outcome.took = start.elapsed();
    outcome
}

/// What the reference evaluator says of each pair observed wrong, with the pods where
/// the world put them: whether it agrees with the case (then ferry's rules are wrong, or
/// slow) and which rule decided.
fn explain(world: &World, case: &Case, outcome: &CaseOutcome) -> Vec<String> {
    let judged = match oracle::judge_placed(case, world.placement()) {
        Ok(j) => j,
        Err(e) => return vec![format!("the evaluator cannot judge the case: {e}")],
    };
    let mut out = Vec::new();
    for p in outcome.probes.iter().filter(|p| p.step > 0 && !p.passed()) {
        let Some(j) = judged
            .iter()
            .find(|j| (j.step, j.port, j.protocol) == (p.step, p.port, p.protocol))
        else {
            continue;
        };
        let mut wrong: BTreeSet<(PodRef, PodRef)> = BTreeSet::new();
        for m in [Some(&p.observed.to_pod), p.observed.to_service.as_ref()]
            .into_iter()
            .flatten()
        {
            wrong.extend(
                p.expected
                    .mismatches(m)
                    .into_iter()
                    .map(|(f, t, _)| (f.clone(), t.clone())),
            );
        }
        if p.strict {
            wrong.extend(p.observed.refused_pod.iter().cloned());
            wrong.extend(p.observed.refused_service.iter().cloned());
        }
        for (f, t) in wrong {
            let agrees = j.evaluated.get(&f, &t) == p.expected.get(&f, &t);
            let why = j.explanations.get(&(f.clone(), t.clone()));
            out.push(format!(
                "step {} {}/{} {f} -> {t}: the evaluator {} the case: {}",
                p.step,
                p.port,
                p.protocol.as_str(),
                if agrees {
                    "agrees with"
                } else {
                    "DISAGREES with"
                },
                why.map_or("-".to_string(), |w| w.replace('\n', "\n    "))
            ));
        }
    }
    out
}

/// Back to no policy and the first labels, and waits until the pairs the case probes
/// reach each other again on every port and protocol it probes: a step's probes must
/// never match an earlier case's state still in force. What was observed, when it did
/// not come back.
fn reset(
    world: &mut World,
    case: &Case,
    timeout: Duration,
) -> Result<(), (String, Vec<ProbeOutcome>)> {
    let t = Instant::now();
    world.reset().map_err(|e| (e, Vec::new()))?;
    // Per port and protocol, every pair some probe of the case checks, allowed.
    let mut wanted: BTreeMap<(u16, Protocol), Matrix> = BTreeMap::new();
    for probe in case.steps.iter().flat_map(|s| &s.probes) {
        let m = Matrix::expected(&case.pods, probe);
        wanted
            .entry((probe.port, probe.protocol))
            .and_modify(|w| w.merge_probed(&m))
            .or_insert_with(|| m.blank_like());
    }
    let (keys, expected): (Vec<(u16, Protocol)>, Vec<Matrix>) = wanted.into_iter().unzip();
    let probes: Vec<Probe> = keys
        .iter()
        .map(|&(port, protocol)| Probe {
            port,
            protocol,
            scope: Scope::All,
            expect: Vec::new(),
        })
        .collect();
    let (observed, rounds) = poll(world, &probes, &expected, timeout, false);
    let outcomes: Vec<ProbeOutcome> = probes
        .iter()
        .zip(expected)
        .zip(observed)
        .map(|((p, expected), observed)| ProbeOutcome {
            step: 0,
            port: p.port,
            protocol: p.protocol,
            scope: Scope::All,
            expected,
            observed,
            strict: false,
            waited: t.elapsed(),
            rounds,
        })
        .filter(|o| !o.passed())
        .collect();
    if outcomes.is_empty() {
        Ok(())
    } else {
        Err((
            "after the reset (no policy) the pods do not all reach each other (step 0 below)"
                .to_string(),
            outcomes,
        ))
    }
}

fn apply(world: &mut World, actions: &[Action]) -> Result<(), String> {
    let ips = world.pod_ips();
    for action in actions {
        match action {
            Action::Create(p) | Action::Update(p) => {
                let spec = cases::substitute(&p.spec, &ips).map_err(|e| e.to_string())?;
                world.put_policy(&p.ns, &p.name, &spec, matches!(action, Action::Update(_)))?;
            }
            Action::Delete(p) => world.delete_policy(&p.ns, &p.name)?,
            Action::CreateCnp(c) | Action::UpdateCnp(c) => {
                let spec = cases::substitute(&c.spec, &ips).map_err(|e| e.to_string())?;
                world.put_cnp(&c.name, &spec, matches!(action, Action::UpdateCnp(_)))?;
            }
            Action::DeleteCnp(c) => world.delete_cnp(&c.name)?,
            Action::LabelPod(l) => {
                let mut labels = world.pod_labels(&l.pod);
                l.apply(&mut labels);
                world.set_pod_labels(&l.pod, labels)?;
            }
            Action::LabelNamespace(l) => {
                let mut labels = world.namespace_labels(&l.ns);
                l.apply(&mut labels);
                world.set_namespace_labels(&l.ns, labels)?;
            }
            Action::DeleteAllPolicies(_) => world.delete_all_policies()?,
        }
    }
    Ok(())
}

/// Probes every pair each expected matrix checks, to the pod IP and (with Services) to
/// the ClusterIP, all at once, until every observation matches `expected` or `timeout`
/// passes: the last observations per probe, and how many rounds it took.
fn poll(
    world: &World,
    probes: &[Probe],
    expected: &[Matrix],
    timeout: Duration,
    strict: bool,
) -> (Vec<Observed>, usize) {
    let end = Instant::now() + timeout;
    // The API's change takes a watch event and an nft transaction per node to be in force
    // (tens of ms): a round probed before that costs a whole PROBE_WAIT for nothing.
    std::thread::sleep(SETTLE);
    let mut rounds = 0;
    loop {
        let round = Instant::now();
        let observed = observe(world, probes, expected);
        rounds += 1;
        let all_match = expected
            .iter()
            .zip(&observed)
            .all(|(e, o)| o.matches(e, strict));
        if all_match || Instant::now() >= end || interrupt::interrupted() {
            return (observed, rounds);
        }
        // A round of only allowed probes takes a few ms: no need to flood the nodes.
        std::thread::sleep(MIN_ROUND.saturating_sub(round.elapsed()));
    }
}

fn observe(world: &World, probes: &[Probe], expected: &[Matrix]) -> Vec<Observed> {
    let services = world.spec().services;
    // (probe index, from, to, to the ClusterIP)
    let mut jobs = Vec::new();
    let mut which = Vec::new();
    for (i, (probe, m)) in probes.iter().zip(expected).enumerate() {
        for (from, to, _) in m.pairs() {
            let targets = [
                world.ip_of(to).map(|ip| (ip, false)),
                world
                    .service_ip_of(to)
                    .filter(|_| services)
                    .map(|ip| (ip, true)),
            ];
            for (to_ip, service) in targets.into_iter().flatten() {
                jobs.push(ProbeJob {
                    from: from.clone(),
                    to_ip,
                    port: probe.port,
                    protocol: probe.protocol,
                });
                which.push((i, from.clone(), to.clone(), service));
            }
        }
    }
    let results = world.probe_many_seen(&jobs, PROBE_WAIT);
    let mut out: Vec<Observed> = expected
        .iter()
        .map(|m| Observed {
            to_pod: m.blank_like(),
            to_service: services.then(|| m.blank_like()),
            refused_pod: BTreeSet::new(),
            refused_service: BTreeSet::new(),
        })
        .collect();
    for ((i, from, to, service), seen) in which.into_iter().zip(results) {
        let o = &mut out[i];
        let (matrix, refused) = if service {
            match o.to_service.as_mut() {
                Some(m) => (m, &mut o.refused_service),
                None => continue,
            }
        } else {
            (&mut o.to_pod, &mut o.refused_pod)
        };
        matrix.set(&from, &to, seen.allowed());
        if seen == Seen::Refused {
            refused.insert((from, to));
        }
    }
    // A pair with no address to probe (never: every pod has one) stays denied.
    out
}

/// What each pod is called in the tables: its `ns/name`, or a number when some name is
/// too long for a column (a legend then says which is which).
fn short_names(pods: &[PodRef]) -> Option<Vec<String>> {
    if pods.iter().all(|p| p.to_string().len() <= 8) {
        None
    } else {
        Some((1..=pods.len()).map(|i| format!("p{i}")).collect())
    }
}

/// A matrix as a table, rows the clients and columns the servers: `.` allowed, `X`
/// denied, `R` refused, `-` self, blank a pair not probed; with `expected`, `!` after
/// each observation that differs from it (a refusal under `strict` always does).
fn render_table(
    m: &Matrix,
    names: &[String],
    expected: Option<&Matrix>,
    refused: &BTreeSet<(PodRef, PodRef)>,
    strict: bool,
) -> String {
    let pods = m.pods();
    let w = names.iter().map(String::len).max().unwrap_or(0).max(4);
    let first = w.max(5);
    let mut out = format!("{:first$}", "");
    for n in names {
        let _ = write!(out, " {n:>w$}");
    }
    out.push('\n');
    for (from, fname) in pods.iter().zip(names) {
        let _ = write!(out, "{fname:first$}");
        for to in pods {
            let cell = match m.get(from, to) {
                None if from == to => "-".to_string(),
                None => String::new(),
                Some(o) => {
                    let was_refused = refused.contains(&(from.clone(), to.clone()));
                    let mark = match (o, was_refused) {
                        (true, _) => ".",
                        (false, true) => "R",
                        (false, false) => "X",
                    };
                    let wrong = expected
                        .is_some_and(|e| e.get(from, to) != Some(o) || (strict && was_refused));
                    if wrong {
                        format!("{mark}!")
                    } else {
                        mark.to_string()
                    }
                }
            };
            let _ = write!(out, " {cell:>w$}");
        }
        out.push('\n');
    }
    out
}

/// A probe's columns side by side: expected, observed to the pod IP, to the ClusterIP.
fn render_columns(p: &ProbeOutcome, names: &[String]) -> String {
    let none = BTreeSet::new();
    let expected = render_table(&p.expected, names, None, &none, false);
    let to_pod = render_table(
        &p.observed.to_pod,
        names,
        Some(&p.expected),
        &p.observed.refused_pod,
        p.strict,
    );
    let mut columns = vec![("expected", expected), ("observed (pod IP)", to_pod)];
    if let Some(s) = &p.observed.to_service {
        columns.push((
            "observed (ClusterIP)",
            render_table(
                s,
                names,
                Some(&p.expected),
                &p.observed.refused_service,
                p.strict,
            ),
        ));
    }
    let columns: Vec<(&str, Vec<&str>)> = columns
        .iter()
        .map(|(t, text)| (*t, text.lines().collect()))
        .collect();
    let width = columns
        .iter()
        .flat_map(|(t, l)| l.iter().map(|s| s.len()).chain([t.len()]))
        .max()
        .unwrap_or(0)
        + 3;
    let mut out = String::new();
    for (title, _) in &columns {
        let _ = write!(out, "{title:width$}");
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    let rows = columns.iter().map(|(_, l)| l.len()).max().unwrap_or(0);
    for r in 0..rows {
        for (_, lines) in &columns {
            let _ = write!(out, "{:width$}", lines.get(r).copied().unwrap_or(""));
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    }
    out
}

/// A `scope: listed` probe: one line per pair.
fn render_list(p: &ProbeOutcome) -> String {
    let word = |allowed: bool| if allowed { "allowed" } else { "denied" };
    let seen = |m: &Matrix, refused: &BTreeSet<(PodRef, PodRef)>, f: &PodRef, t: &PodRef| {
        let o = m.get(f, t).unwrap_or(false);
        let key = (f.clone(), t.clone());
        let text = if refused.contains(&key) {
            "refused".to_string()
        } else {
            word(o).to_string()
        };
        let wrong = p.expected.get(f, t) != Some(o) || (p.strict && refused.contains(&key));
        if wrong {
            format!("{text} !")
        } else {
            text
        }
    };
    let mut out = String::new();
    for (f, t, want) in p.expected.pairs() {
        let _ = write!(
            out,
            "  {f} -> {t}: expected {}; pod IP: {}",
            word(want),
            seen(&p.observed.to_pod, &p.observed.refused_pod, f, t)
        );
        if let Some(s) = &p.observed.to_service {
            let _ = write!(
                out,
                "; ClusterIP: {}",
                seen(s, &p.observed.refused_service, f, t)
            );
        }
        out.push('\n');
    }
    out
}

fn render_case(i: usize, n: usize, case: &Case, o: &CaseOutcome) -> String {
    let mut out = format!(
        "=== case {i}/{n}: {} [{}] {} ({:.1?}, reset {:.1?})\n",
        case.name,
        case.source,
        o.verdict(),
        o.took,
        o.reset
    );
    if let Some(why) = &o.skipped {
        let _ = writeln!(out, "  skipped: {why}");
        return out;
    }
    if let Some(e) = &o.error {
        let _ = writeln!(out, "  error: {e}");
    }
    let names = short_names(&case.pods);
    let tabled = o
        .probes
        .iter()
        .any(|p| p.scope == Scope::All || p.step == 0);
    if let (Some(names), true) = (&names, tabled) {
        let legend: Vec<String> = names
            .iter()
            .zip(&case.pods)
            .map(|(n, p)| format!("{n}={p}"))
            .collect();
        let _ = writeln!(out, "  pods: {}", legend.join(", "));
    }
    let full: Vec<String> = case.pods.iter().map(ToString::to_string).collect();
    let names = names.unwrap_or(full);
    for p in &o.probes {
        let _ = writeln!(
            out,
            "--- {} probe {}/{}: {} (after {:.1?}, {} round{})",
            match p.step {
                0 => "reset".to_string(),
                s => format!("step {s}"),
            },
            p.port,
            p.protocol.as_str(),
            if p.passed() { "ok" } else { "MISMATCH" },
            p.waited,
            p.rounds,
            if p.rounds == 1 { "" } else { "s" }
        );
        if p.scope == Scope::Listed {
            out += &render_list(p);
        } else {
            out += &render_columns(p, &names);
        }
    }
    for e in &o.explained {
        let _ = writeln!(out, "  {e}");
    }
    out
}

fn matrix_json(m: &Matrix) -> Value {
    Value::Array(
        m.pairs()
            .map(|(f, t, a)| json!({"from": f.to_string(), "to": t.to_string(), "allow": a}))
            .collect(),
    )
}

fn pairs_json(set: &BTreeSet<(PodRef, PodRef)>) -> Value {
    Value::Array(
        set.iter()
            .map(|(f, t)| json!({"from": f.to_string(), "to": t.to_string()}))
            .collect(),
    )
}

fn mismatches_json(p: &ProbeOutcome) -> Vec<Value> {
    let mut out = Vec::new();
    let targets = [
        ("pod IP", Some(&p.observed.to_pod), &p.observed.refused_pod),
        (
            "ClusterIP",
            p.observed.to_service.as_ref(),
            &p.observed.refused_service,
        ),
    ];
    for (target, observed, refused) in targets {
        let Some(observed) = observed else { continue };
        for (f, t, want) in p.expected.mismatches(observed) {
            out.push(
                json!({"from": f.to_string(), "to": t.to_string(), "expected": want,
                            "target": target}),
            );
        }
        if p.strict {
            for (f, t) in refused {
                out.push(json!({"from": f.to_string(), "to": t.to_string(),
                                "expected": p.expected.get(f, t), "target": target,
                                "refused": true}));
            }
        }
    }
    out
}

fn case_json(o: &CaseOutcome) -> Value {
    json!({
        "name": o.name,
        "passed": o.passed(),
        "skipped": o.skipped,
        "error": o.error,
        "evaluator": o.explained,
        "seconds": o.took.as_secs_f64(),
        "reset_seconds": o.reset.as_secs_f64(),
        "probes": o.probes.iter().map(|p| json!({
            "step": p.step,
            "port": p.port,
            "protocol": p.protocol.as_str(),
            "scope": if p.scope == Scope::Listed { "listed" } else { "all" },
            "passed": p.passed(),
            "seconds": p.waited.as_secs_f64(),
            "rounds": p.rounds,
            "expected": matrix_json(&p.expected),
            "observed_pod_ip": matrix_json(&p.observed.to_pod),
            "observed_cluster_ip": p.observed.to_service.as_ref().map(matrix_json),
            "refused_pod_ip": pairs_json(&p.observed.refused_pod),
            "refused_cluster_ip": pairs_json(&p.observed.refused_service),
            "mismatches": mismatches_json(p),
        })).collect::<Vec<_>>(),
    })
}
