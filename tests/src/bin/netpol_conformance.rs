//! `ferry-netpol-conformance`: runs NetworkPolicy conformance cases (the format of
//! `tests/netpol/*.yaml`) against ferry on a 3-node cluster of network namespaces, and
//! prints what each probe expected and observed.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_tests::interrupt;
use ferry_tests::netpol::cases::{self, Action, Case, Matrix, PodRef, Probe, Protocol};
use ferry_tests::netpol::world::{ProbeJob, World};
use serde_json::{json, Value};

const USAGE: &str = "\
usage: ferry-netpol-conformance --cases FILE [-o table|json] [--timeout SECONDS] [--logs DIR]\n       (as root)

Runs NetworkPolicy conformance cases (format: tests/netpol/README.md; files:
tests/netpol/{examples,ferry,upstream}.yaml) against ferry: a 3-node cluster of network
namespaces with a real etcd, ferry-overlayd --network-policy on each node watching a
Kubernetes API stand-in (node.json then says networkPolicy, so every ADD waits until
the new pod is covered).

The world is built once: namespaces x, y, z and pods a, b, c in each (all nine, whatever
the cases list), spread over the nodes, each with a ClusterIP Service s-<ns>-<pod>
(kube-proxy-style iptables rules) and servers on every port and protocol any case of the
file uses (its container ports name them all). For each case: reset (every policy
deleted, every pod and namespace label back to its first value, then waited for until
the case's pods reach each other again), then each step's actions through the API, then
the probes, polled until they match the expected matrix or --timeout passes (default 10;
a probe waits 500 ms for its answer). Only the case's pods are probed; the others exist
and are left alone. Each probe goes from every pod of the case to every other, to the pod
IP and to its Service's ClusterIP.

Protocols: TCP is a connect; UDP a datagram echoed back. SCTP: the kernel may have no
SCTP stack, so the client sends a well-formed SCTP INIT (correct CRC32c) from a raw IP
socket and the server pod counts INITs arriving for that port on a raw IPPROTO_SCTP
socket: this proves whether the first packet of an association passes the rules, and
nothing after it.

Output (-o table, the default): per probe the expected matrix and the observed ones (to
the pod IP, to the ClusterIP), rows = clients, columns = servers, '.' allowed, 'X'
denied, '-' self; a mismatch is shown as '!' after the observed mark. The last line is
'N passed, N failed' (cases). -o json: one JSON document on stdout, that line on stderr.
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
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut cases = None;
    let mut output = Output::Table;
    let mut timeout = Duration::from_secs(10);
    let mut logs = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "--cases" => cases = Some(PathBuf::from(value("--cases")?)),
            "--logs" => logs = Some(PathBuf::from(value("--logs")?)),
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
    }))
}

/// What one probe of one step expected and observed.
struct ProbeOutcome {
    step: usize,
    port: u16,
    protocol: Protocol,
    expected: Matrix,
    to_pod: Matrix,
    to_service: Matrix,
    /// From the end of the step's actions to the last probe round.
    waited: Duration,
    /// Rounds of probes until it matched (or the timeout).
    rounds: usize,
}

impl ProbeOutcome {
    fn passed(&self) -> bool {
        self.expected.mismatches(&self.to_pod).is_empty()
            && self.expected.mismatches(&self.to_service).is_empty()
    }
}

struct CaseOutcome {
    name: String,
    probes: Vec<ProbeOutcome>,
    /// An action the API refused, or a reset that did not take.
    error: Option<String>,
    /// Until the reset took effect.
    reset: Duration,
    took: Duration,
}

impl CaseOutcome {
    fn passed(&self) -> bool {
        self.error.is_none() && self.probes.iter().all(ProbeOutcome::passed)
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

/// Builds the world, runs every case; true when all passed.
fn run(args: &Args, cases: &[Case]) -> bool {
    let start = Instant::now();
    let ports: BTreeSet<u16> = cases.iter().flat_map(|c| c.server_ports.clone()).collect();
    let protocols: BTreeSet<Protocol> = cases
        .iter()
        .flat_map(|c| c.server_protocols.clone())
        .collect();
    let ports: Vec<u16> = ports.into_iter().collect();
    let protocols: Vec<Protocol> = protocols.into_iter().collect();
    eprintln!(
        "building the world: 3 nodes, 9 pods serving {ports:?} on {:?}",
        protocols.iter().map(|p| p.as_str()).collect::<Vec<_>>()
    );
    let mut world = World::new(&ports, &protocols, &mut |step| {
        eprintln!("  {step}");
        interrupt::stop_if_interrupted();
    });
    eprintln!("world ready in {:.1?}", start.elapsed());
    let mut outcomes = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        interrupt::stop_if_interrupted();
        let outcome = run_case(&mut world, case, args.timeout);
        if args.output == Output::Table {
            print!("{}", render_case(i + 1, cases.len(), case, &outcome));
        } else {
            eprintln!(
                "case {}/{} {}: {}",
                i + 1,
                cases.len(),
                case.name,
                if outcome.passed() { "PASS" } else { "FAIL" }
            );
        }
        outcomes.push(outcome);
    }
    let passed = outcomes.iter().filter(|o| o.passed()).count();
    let failed = outcomes.len() - passed;
    let summary = format!("{passed} passed, {failed} failed");
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
                "seconds": start.elapsed().as_secs_f64(),
                "cases": outcomes.iter().map(case_json).collect::<Vec<_>>(),
            });
            println!("{doc:#}");
            eprintln!("{summary}");
        }
    }
    if let Some(dir) = &args.logs {
        save_logs(&world, dir);
    }
    failed == 0
}

/// Copies each node's daemon log to `dir/<node>.log` (the originals go with the world).
fn save_logs(world: &World, dir: &std::path::Path) {
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("--logs {}: {e}", dir.display());
        return;
    }
    for n in &world.cluster.nodes {
        let to = dir.join(format!("{}.log", n.name));
        match std::fs::copy(n.log_path(), &to) {
            Ok(_) => eprintln!("daemon log of {}: {}", n.name, to.display()),
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
        reset: Duration::ZERO,
        took: Duration::ZERO,
    };
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
        let (observed, rounds) = poll(world, &case.pods, &step.probes, &expected, timeout);
        for ((probe, expected), (to_pod, to_service)) in
            step.probes.iter().zip(expected).zip(observed)
        {
            outcome.probes.push(ProbeOutcome {
                step: s + 1,
                port: probe.port,
                protocol: probe.protocol,
                expected,
                to_pod,
                to_service,
                waited: t.elapsed(),
                rounds,
            });
        }
    }
    outcome.took = start.elapsed();
    outcome
}

/// Back to no policy and the first labels, and waits until the case's pods reach each
/// other again on every port and protocol it probes: a step's probes must never match
/// an earlier case's state still in force. What was observed, when it did not come back.
fn reset(
    world: &mut World,
    case: &Case,
    timeout: Duration,
) -> Result<(), (String, Vec<ProbeOutcome>)> {
    let t = Instant::now();
    world.reset().map_err(|e| (e, Vec::new()))?;
    let probes: BTreeSet<(u16, Protocol)> = case
        .steps
        .iter()
        .flat_map(|s| s.probes.iter().map(|p| (p.port, p.protocol)))
        .collect();
    let probes: Vec<Probe> = probes
        .into_iter()
        .map(|(port, protocol)| Probe {
            port,
            protocol,
            expect: Vec::new(),
        })
        .collect();
    let expected: Vec<Matrix> = probes
        .iter()
        .map(|p| Matrix::expected(&case.pods, p))
        .collect();
    let (observed, rounds) = poll(world, &case.pods, &probes, &expected, timeout);
    let outcomes: Vec<ProbeOutcome> = probes
        .iter()
        .zip(expected)
        .zip(observed)
        .map(|((p, expected), (to_pod, to_service))| ProbeOutcome {
            step: 0,
            port: p.port,
            protocol: p.protocol,
            expected,
            to_pod,
            to_service,
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

/// Probes every pair of `pods` for each probe, to the pod IP and to the ClusterIP, all at
/// once, until every observation matches `expected` or `timeout` passes: the last
/// observations, `(to pod, to service)` per probe, and how many rounds it took.
fn poll(
    world: &World,
    pods: &[PodRef],
    probes: &[Probe],
    expected: &[Matrix],
    timeout: Duration,
) -> (Vec<(Matrix, Matrix)>, usize) {
    let end = Instant::now() + timeout;
    // The API's change takes a watch event and an nft transaction per node to be in force
    // (tens of ms): a round probed before that costs a whole PROBE_WAIT for nothing.
    std::thread::sleep(SETTLE);
    let mut rounds = 0;
    loop {
        let round = Instant::now();
        let observed = observe(world, pods, probes);
        rounds += 1;
        let all_match = expected
            .iter()
            .zip(&observed)
            .all(|(e, (p, s))| e.mismatches(p).is_empty() && e.mismatches(s).is_empty());
        if all_match || Instant::now() >= end || interrupt::interrupted() {
            return (observed, rounds);
        }
        // A round of only allowed probes takes a few ms: no need to flood the nodes.
        std::thread::sleep(MIN_ROUND.saturating_sub(round.elapsed()));
    }
}

fn observe(world: &World, pods: &[PodRef], probes: &[Probe]) -> Vec<(Matrix, Matrix)> {
    let mut jobs = Vec::new();
    for probe in probes {
        for from in pods {
            for to in pods.iter().filter(|t| *t != from) {
                let target = world.pod(to);
                for to_ip in [target.ip, target.service_ip] {
                    jobs.push(ProbeJob {
                        from: from.clone(),
                        to_ip,
                        port: probe.port,
                        protocol: probe.protocol,
                    });
                }
            }
        }
    }
    let results = world.probe_many(&jobs, PROBE_WAIT);
    let mut out: Vec<(Matrix, Matrix)> = probes
        .iter()
        .map(|_| (Matrix::all_allowed(pods), Matrix::all_allowed(pods)))
        .collect();
    let mut results = results.into_iter();
    for (i, _) in probes.iter().enumerate() {
        for from in pods {
            for to in pods.iter().filter(|t| *t != from) {
                let (to_pod, to_service) = &mut out[i];
                to_pod.set(from, to, results.next().unwrap_or(false));
                to_service.set(from, to, results.next().unwrap_or(false));
            }
        }
    }
    out
}

/// A matrix as `Matrix`'s table does it, with `!` after each observation that differs
/// from `expected`.
fn render_observed(expected: &Matrix, observed: &Matrix) -> String {
    let pods = expected.pods();
    let mut out = format!("{:5}", "");
    for p in pods {
        let _ = write!(out, " {:>4}", p.to_string());
    }
    out.push('\n');
    for from in pods {
        let _ = write!(out, "{:5}", from.to_string());
        for to in pods {
            let cell = match (observed.get(from, to), expected.get(from, to)) {
                (None, _) => "-".to_string(),
                (Some(o), e) => {
                    let mark = if o { "." } else { "X" };
                    if e == Some(o) {
                        mark.to_string()
                    } else {
                        format!("{mark}!")
                    }
                }
            };
            let _ = write!(out, " {cell:>4}");
        }
        out.push('\n');
    }
    out
}

fn render_case(i: usize, n: usize, case: &Case, o: &CaseOutcome) -> String {
    let mut out = format!(
        "=== case {i}/{n}: {} [{}] {} ({:.1?}, reset {:.1?})\n",
        case.name,
        format!("{:?}", case.source).to_ascii_lowercase(),
        if o.passed() { "PASS" } else { "FAIL" },
        o.took,
        o.reset
    );
    if let Some(e) = &o.error {
        let _ = writeln!(out, "  error: {e}");
    }
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
        let expected = p.expected.to_string();
        let to_pod = render_observed(&p.expected, &p.to_pod);
        let to_service = render_observed(&p.expected, &p.to_service);
        let columns = [
            ("expected", expected.lines().collect::<Vec<_>>()),
            ("observed (pod IP)", to_pod.lines().collect()),
            ("observed (ClusterIP)", to_service.lines().collect()),
        ];
        let width = columns
            .iter()
            .flat_map(|(t, l)| l.iter().map(|s| s.len()).chain([t.len()]))
            .max()
            .unwrap_or(0)
            + 3;
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

fn case_json(o: &CaseOutcome) -> Value {
    json!({
        "name": o.name,
        "passed": o.passed(),
        "error": o.error,
        "seconds": o.took.as_secs_f64(),
        "reset_seconds": o.reset.as_secs_f64(),
        "probes": o.probes.iter().map(|p| json!({
            "step": p.step,
            "port": p.port,
            "protocol": p.protocol.as_str(),
            "passed": p.passed(),
            "seconds": p.waited.as_secs_f64(),
            "rounds": p.rounds,
            "expected": matrix_json(&p.expected),
            "observed_pod_ip": matrix_json(&p.to_pod),
            "observed_cluster_ip": matrix_json(&p.to_service),
            "mismatches": p.expected.mismatches(&p.to_pod).iter().map(|(f, t, want)| json!({
                "from": f.to_string(), "to": t.to_string(), "expected": want, "target": "pod IP"}))
                .chain(p.expected.mismatches(&p.to_service).iter().map(|(f, t, want)| json!({
                "from": f.to_string(), "to": t.to_string(), "expected": want, "target": "ClusterIP"})))
                .collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
