//! A kubelet stand-in: runs the pods given to a node through its containerd's CRI as
//! kubelet runs them. One thread per pod, inside the node's network namespace (where
//! kubelet's probes connect from):
//!
//! - a sandbox (host network when the pod says so), then each init container to
//!   completion in order, then the containers;
//! - restartPolicy Always: a container that exits is started again, at once the first
//!   time, then after kubelet's back-off (10 s doubling to 5 min, measured from its exit;
//!   "CrashLoopBackOff" while it waits); an init container likewise;
//! - startup, liveness and readiness probes (httpGet, tcpSocket, exec) with their
//!   `initialDelaySeconds`, `periodSeconds`, `timeoutSeconds`, `failureThreshold`: a
//!   failed liveness probe stops the container (its grace period) to be restarted;
//! - a running pod's ConfigMap and Secret volumes brought up to date every
//!   `syncFrequency` (1 min), or at once when [`Kubelet::sync_volumes`] asks;
//! - deletion: StopContainer with the pod's grace period, StopPodSandbox,
//!   RemovePodSandbox.
//!
//! What kubelet reports is kept as [`PodStatus`] (with an event list, as `kubectl
//! describe` shows it) and handed to a callback that writes it to the API stand-in.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::cri::Cri;
use crate::kind::spec;

/// Kubelet's container restart back-off.
pub const BACKOFF_START: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long without failing starts its back-off afresh.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How often the worker looks at its containers.
const TICK: Duration = Duration::from_millis(100);
/// kubelet's `syncFrequency`: how often a running pod's ConfigMap and Secret volumes are
/// brought up to date (sooner when [`Kubelet::sync_volumes`] asks).
const VOLUME_SYNC: Duration = Duration::from_secs(60);

/// One container as kubelet reports it.
#[derive(Debug, Clone, Default)]
pub struct ContainerState {
    pub id: Option<String>,
    pub restarts: u32,
    pub running: bool,
    pub ready: bool,
    pub started: bool,
    /// When it was last started (the kubelet's "Started container" event).
    pub started_at: Option<Instant>,
    pub last_exit: Option<i32>,
    /// "CrashLoopBackOff" while it waits to be restarted.
    pub waiting: Option<String>,
    /// How many times it waited in back-off.
    pub backoffs: u32,
}

/// One pod as kubelet reports it.
#[derive(Debug, Clone, Default)]
pub struct PodStatus {
    pub sandbox: Option<String>,
    /// The sandbox's first process, through which a test enters a pod's namespaces.
    pub sandbox_pid: u32,
    /// The pod's addresses (the node's for a host-network pod), comma-separated.
    pub ip: String,
    pub init_done: bool,
    pub containers: BTreeMap<String, ContainerState>,
    pub events: Vec<String>,
    pub gone: bool,
}

impl PodStatus {
    pub fn ready(&self) -> bool {
        self.sandbox.is_some() && self.init_done && self.containers.values().all(|c| c.ready)
    }

    /// Restarts of every container (init containers included).
    pub fn restarts(&self) -> u32 {
        self.containers.values().map(|c| c.restarts).sum()
    }

    pub fn backoffs(&self) -> u32 {
        self.containers.values().map(|c| c.backoffs).sum()
    }
}

/// What the kubelet of one node knows besides its pods.
pub struct NodeView {
    pub name: String,
    pub ips: Vec<String>,
    pub netns: PathBuf,
    /// containerd's socket, as the host reaches it.
    pub sock: PathBuf,
    /// The node's root as the host reaches it.
    pub root: PathBuf,
    pub wiring: Wiring,
}

pub type ImagesFn = Arc<dyn Fn() -> BTreeMap<String, String> + Send + Sync>;
pub type ObjectsFn = Arc<dyn Fn() -> Objects + Send + Sync>;
pub type ReportFn = Arc<dyn Fn(&Pod, &PodStatus) + Send + Sync>;

/// What a kubelet gets from its cluster.
#[derive(Clone)]
pub struct Wiring {
    /// The `kubernetes` Service's ClusterIP and port.
    pub api_service: (String, u16),
    /// Image names as manifests say them, to the images the node has.
    pub images: ImagesFn,
    /// The cluster's ConfigMaps, Secrets, service account tokens and the API's CA.
    pub objects: ObjectsFn,
    /// Called with the pod and its status whenever the status changes.
    pub report: ReportFn,
}

/// The objects kubelet reads for a pod's env and volumes.
#[derive(Clone, Default)]
pub struct Objects {
    pub config_maps: Vec<k8s_openapi::api::core::v1::ConfigMap>,
    pub secrets: Vec<k8s_openapi::api::core::v1::Secret>,
    pub tokens: BTreeMap<String, String>,
    pub ca: String,
}

enum Stop {
    /// Delete the pod: stop its containers and sandbox.
    Delete,
    /// The node went down under the pod: stop the thread, touching nothing.
    Abandon,
}

struct Worker {
    pod: Pod,
    status: Arc<Mutex<PodStatus>>,
    stop: Sender<Stop>,
    thread: Option<JoinHandle<()>>,
}

pub struct Kubelet {
    node: Arc<NodeView>,
    pods: Mutex<BTreeMap<String, Worker>>,
    /// Bumped to have every running pod's volumes synced at its next look.
    volume_sync: Arc<AtomicU64>,
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

impl Kubelet {
    pub fn new(node: NodeView) -> Kubelet {
        Kubelet {
            node: Arc::new(node),
            pods: Mutex::new(BTreeMap::new()),
            volume_sync: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Starts running `pod` (its `metadata.uid` names it).
    pub fn run(&self, pod: Pod) -> Arc<Mutex<PodStatus>> {
        let status = Arc::new(Mutex::new(PodStatus::default()));
        let (tx, rx) = channel();
        let node = self.node.clone();
        let (p, s) = (pod.clone(), status.clone());
        let sync = self.volume_sync.clone();
        let thread = std::thread::Builder::new()
            .name(format!(
                "kubelet-{}",
                pod.metadata.name.as_deref().unwrap_or("")
            ))
            .spawn(move || run_pod(node, p, s, rx, sync))
            .expect("spawn a pod worker");
        self.pods.lock().expect("pods").insert(
            uid(&pod),
            Worker {
                pod,
                status: status.clone(),
                stop: tx,
                thread: Some(thread),
            },
        );
        status
    }

    /// Deletes the pod as kubelet does for a deleted pod, and waits until it is gone.
    pub fn delete(&self, uid: &str) {
        let worker = self.pods.lock().expect("pods").remove(uid);
        if let Some(mut w) = worker {
            let _ = w.stop.send(Stop::Delete);
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Has every running pod's ConfigMap and Secret volumes brought up to date within a
    /// worker's tick, as kubelet's periodic sync does within its `syncFrequency`.
    pub fn sync_volumes(&self) {
        self.volume_sync.fetch_add(1, Ordering::SeqCst);
    }

    /// The node went down: every worker stops without touching the runtime (which is
    /// gone too).
    pub fn abandon_all(&self) {
        let workers: Vec<Worker> = std::mem::take(&mut *self.pods.lock().expect("pods"))
            .into_values()
            .collect();
        for mut w in workers {
            let _ = w.stop.send(Stop::Abandon);
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }

    pub fn status(&self, uid: &str) -> Option<PodStatus> {
        let pods = self.pods.lock().expect("pods");
        pods.get(uid)
            .map(|w| w.status.lock().expect("status").clone())
    }

    /// The pods this kubelet runs.
    pub fn pods(&self) -> Vec<Pod> {
        self.pods
            .lock()
            .expect("pods")
            .values()
            .map(|w| w.pod.clone())
            .collect()
    }

    /// The text of container `name`'s log (restart `attempt`) of pod `uid`.
    pub fn log(&self, uid: &str, name: &str, attempt: u32) -> String {
        let pods = self.pods.lock().expect("pods");
        match pods.get(uid) {
            Some(w) => {
                let p = spec::log_path(&w.pod, name, attempt);
                spec::log_text(&self.node.root.join(p.strip_prefix("/").unwrap_or(&p)))
            }
            None => String::new(),
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.abandon_all();
    }
}

/// A probe's schedule and results.
struct Prober {
    probe: Probe,
    next: Instant,
    successes: i32,
    failures: i32,
}

impl Prober {
    fn new(probe: &Probe, started: Instant) -> Prober {
        let delay = probe.initial_delay_seconds.unwrap_or(0).max(0) as u64;
        Prober {
            probe: probe.clone(),
            next: started + Duration::from_secs(delay),
            successes: 0,
            failures: 0,
        }
    }

    fn period(&self) -> Duration {
        Duration::from_secs(self.probe.period_seconds.unwrap_or(10).max(1) as u64)
    }

    /// Runs the probe when it is due; Some(true) once it passes its success threshold,
    /// Some(false) once it reaches its failure threshold, None otherwise. The reason of
    /// the last failure goes to `why`.
    fn tick(
        &mut self,
        run: impl FnOnce(&Probe) -> Result<(), String>,
        why: &mut String,
    ) -> Option<bool> {
        let now = Instant::now();
        if now < self.next {
            return None;
        }
        self.next = now + self.period();
        match run(&self.probe) {
            Ok(()) => {
                self.failures = 0;
                self.successes += 1;
                (self.successes >= self.probe.success_threshold.unwrap_or(1)).then_some(true)
            }
            Err(e) => {
                *why = e;
                self.successes = 0;
                self.failures += 1;
                (self.failures >= self.probe.failure_threshold.unwrap_or(3)).then_some(false)
            }
        }
    }
}

/// One container's life in the worker.
struct Running {
    c: Container,
    state: ContainerState,
    attempt: u32,
    started_at: Instant,
    exited_at: Option<Instant>,
    /// kubelet's back-off for the next restart (none before the first failure).
    backoff: Option<Duration>,
    startup: Option<Prober>,
    liveness: Option<Prober>,
    readiness: Option<Prober>,
}

struct Pw {
    node: Arc<NodeView>,
    pod: Pod,
    status: Arc<Mutex<PodStatus>>,
    cri: Cri,
    born: Instant,
    sandbox: String,
    sandbox_config: k8s_cri::v1::PodSandboxConfig,
    vols: BTreeMap<String, String>,
}

impl Pw {
    fn event(&self, what: String) {
        let at = self.born.elapsed().as_secs_f32();
        let mut st = self.status.lock().expect("status");
        st.events.push(format!("{at:7.2}s {what}"));
    }

    fn publish(&self) {
        let st = self.status.lock().expect("status").clone();
        (self.node.wiring.report)(&self.pod, &st);
    }

    fn set(&self, f: impl FnOnce(&mut PodStatus)) {
        f(&mut self.status.lock().expect("status"));
        self.publish();
    }

    fn ctx_objects(&self) -> Objects {
        (self.node.wiring.objects)()
    }

    fn ip(&self) -> String {
        self.status.lock().expect("status").ip.clone()
    }

    /// `f` with what kubelet reads for the pod now: the node, the cluster's objects, the
    /// pod's service account token.
    fn with_ctx<T>(&self, f: impl FnOnce(&spec::Context) -> T) -> T {
        let objects = self.ctx_objects();
        let sa = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let ns = self.pod.metadata.namespace.clone().unwrap_or_default();
        let token = objects.tokens.get(&format!("{ns}/{sa}")).cloned();
        let pods_dir = self.node.root.join("var/lib/kubelet/pods");
        let images = (self.node.wiring.images)();
        let ctx = spec::Context {
            node_name: &self.node.name,
            node_ips: &self.node.ips,
            config_maps: &objects.config_maps,
            secrets: &objects.secrets,
            api_service: (
                &self.node.wiring.api_service.0,
                self.node.wiring.api_service.1,
            ),
            token: token.as_deref().map(|t| (t, objects.ca.as_str())),
            pods_dir: &pods_dir,
            node_pods: Path::new("/var/lib/kubelet/pods"),
            node_root: &self.node.root,
            images: &images,
        };
        f(&ctx)
    }

    /// Creates and starts `c`; its CRI id.
    fn start(&self, c: &Container, attempt: u32) -> Result<String, String> {
        let config = self
            .with_ctx(|ctx| {
                spec::container_config(&self.pod, c, ctx, &self.vols, attempt, &self.ip())
            })
            .map_err(|e| format!("CreateContainerConfigError: {}", e.0))?;
        let id = self
            .cri
            .create_container(&self.sandbox, config, self.sandbox_config.clone())
            .map_err(|e| format!("CreateContainerError: {}", e.message()))?;
        self.cri
            .start_container(&id)
            .map_err(|e| format!("StartContainer {}: {}", c.name, e.message()))?;
        Ok(id)
    }

    /// A tick of a startup or liveness probe (`kind`) of container `c`: its verdict, as
    /// [`Prober::tick`] gives it, each failure an event "`kind` probe failed: why".
    fn tick_probe(&self, p: &mut Prober, id: &str, c: &Container, kind: &str) -> Option<bool> {
        let mut why = String::new();
        let verdict = p.tick(|pr| self.run_probe(id, c, pr), &mut why);
        if verdict == Some(false) || (verdict.is_none() && !why.is_empty()) {
            self.event(format!("{kind} probe failed: {why}"));
        }
        verdict
    }

    fn run_probe(&self, id: &str, c: &Container, p: &Probe) -> Result<(), String> {
        let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
        let port = |port: &IntOrString| -> Result<u16, String> {
            match port {
                IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n}")),
                IntOrString::String(name) => c
                    .ports
                    .iter()
                    .flatten()
                    .find(|cp| cp.name.as_deref() == Some(name))
                    .and_then(|cp| u16::try_from(cp.container_port).ok())
                    .ok_or_else(|| format!("no port named {name}")),
            }
        };
        let default_host = self.ip().split(',').next().unwrap_or("").to_string();
        if let Some(h) = &p.http_get {
            let host = h.host.clone().unwrap_or(default_host);
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            return http_probe(&host, port(&h.port)?, &path, timeout);
        }
        if let Some(t) = &p.tcp_socket {
            let host = t.host.clone().unwrap_or(default_host);
            let addr = sock_addr(&host, port(&t.port)?)?;
            return TcpStream::connect_timeout(&addr, timeout)
                .map(drop)
                .map_err(|e| format!("dial tcp {addr}: {e}"));
        }
        if let Some(e) = &p.exec {
            let cmd: Vec<&str> = e.command.iter().flatten().map(String::as_str).collect();
            let (code, out, err) = self
                .cri
                .exec(id, &cmd, timeout.as_secs() as i64)
                .map_err(|e| e.message().to_string())?;
            return if code == 0 {
                Ok(())
            } else {
                Err(format!("exit {code}: {out}{err}"))
            };
        }
        Err("a probe of a kind not served here".into())
    }

    /// Waits `d` unless told to stop; the stop, if any.
    fn wait(rx: &Receiver<Stop>, d: Duration) -> Option<Stop> {
        match rx.recv_timeout(d) {
            Ok(s) => Some(s),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Stop::Abandon),
        }
    }
}

fn sock_addr(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}:{port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}:{port}: no address"))
}

/// An HTTP GET as kubelet's prober makes it: success is a status from 200 to 399.
fn http_probe(host: &str, port: u16, path: &str, timeout: Duration) -> Result<(), String> {
    let addr = sock_addr(host, port)?;
    let url = format!("http://{}:{port}{path}", crate::cluster::url_host(host));
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("Get \"{url}\": dial tcp {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        crate::cluster::url_host(host)
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    let mut buf = Vec::new();
    let _ = s.take(4096).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let code: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get \"{url}\": no HTTP answer"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

fn run_pod(
    node: Arc<NodeView>,
    pod: Pod,
    status: Arc<Mutex<PodStatus>>,
    rx: Receiver<Stop>,
    volume_sync: Arc<AtomicU64>,
) {
    if let Err(e) = crate::inside::enter_path(&node.netns) {
        status
            .lock()
            .expect("status")
            .events
            .push(format!("cannot enter the node's network namespace: {e}"));
        return;
    }
    let cri = Cri::connect(&node.sock);
    let born = Instant::now();
    // The sandbox, retried as kubelet retries a failed RunPodSandbox (a new attempt
    // number each time: the runtime may still hold a failed attempt's name).
    let mut attempt = 0;
    let (sandbox, sandbox_config) = loop {
        let config = spec::sandbox_config(&pod, attempt);
        attempt += 1;
        match cri.run_sandbox(config.clone()) {
            Ok(id) => break (id, config),
            Err(e) => {
                let st = {
                    let mut st = status.lock().expect("status");
                    st.events.push(format!(
                        "{:7.2}s FailedCreatePodSandBox: {}",
                        born.elapsed().as_secs_f32(),
                        e.message()
                    ));
                    st.clone()
                };
                // Reported at once, as kubelet records the event: a pod that never gets
                // its sandbox says why.
                (node.wiring.report)(&pod, &st);
                if Pw::wait(&rx, Duration::from_secs(1)).is_some() {
                    return;
                }
            }
        }
    };
    let (ip, pid) = cri.pod_status(&sandbox).unwrap_or_default();
    let ip = if spec::host_network(&pod) {
        node.ips.join(",")
    } else {
        ip
    };
    let mut w = Pw {
        node: node.clone(),
        pod: pod.clone(),
        status: status.clone(),
        cri,
        born,
        sandbox: sandbox.clone(),
        sandbox_config,
        vols: BTreeMap::new(),
    };
    w.set(|st| {
        st.sandbox = Some(sandbox.clone());
        st.sandbox_pid = pid;
        st.ip = ip;
    });
    w.event(format!(
        "Sandbox {} started",
        &sandbox[..12.min(sandbox.len())]
    ));
    // Volumes: retried until every object they need exists.
    loop {
        match w.with_ctx(|ctx| spec::volumes(&pod, ctx)) {
            Ok(v) => {
                w.vols = v;
                break;
            }
            Err(e) => {
                w.event(format!("FailedMount: {}", e.0));
                if let Some(s) = Pw::wait(&rx, Duration::from_secs(2)) {
                    return finish(&w, s, &mut Vec::new());
                }
            }
        }
    }
    let spec_ = pod.spec.clone().unwrap_or_default();
    // Init containers, each to completion, in order.
    for c in spec_.init_containers.iter().flatten() {
        let mut r = Running::new(c.clone());
        loop {
            match w.start(c, r.attempt) {
                Ok(id) => {
                    w.event(format!("Started init container {}", c.name));
                    r.state.id = Some(id.clone());
                    r.state.running = true;
                    w.set(|st| {
                        st.containers.insert(c.name.clone(), r.state.clone());
                    });
                    let code = loop {
                        if let Some(s) = Pw::wait(&rx, TICK) {
                            let mut one = vec![r];
                            return finish(&w, s, &mut one);
                        }
                        if let Ok(Some(code)) = w.cri.exited(&id) {
                            break code;
                        }
                    };
                    r.state.running = false;
                    r.state.last_exit = Some(code);
                    if code == 0 {
                        r.state.ready = true;
                        w.event(format!("Init container {} completed", c.name));
                        w.set(|st| {
                            st.containers.insert(c.name.clone(), r.state.clone());
                        });
                        break;
                    }
                    w.event(format!("Init container {} exited {code}", c.name));
                    r.exited_at = Some(Instant::now());
                }
                Err(e) => {
                    w.event(e);
                    r.exited_at = Some(Instant::now());
                }
            }
            if let Some(s) = r.back_off(&w, &rx) {
                let mut one = vec![r];
                return finish(&w, s, &mut one);
            }
        }
    }
    let mut running: Vec<Running> = spec_
        .containers
        .iter()
        .map(|c| Running::new(c.clone()))
        .collect();
    // The containers are there (not ready) before the init containers count as done: a
    // pod is never Ready for a moment with no containers.
    w.set(|st| {
        for r in &running {
            st.containers.insert(r.c.name.clone(), r.state.clone());
        }
        st.init_done = true;
    });
    for r in running.iter_mut() {
        r.launch(&w);
    }
    let mut synced = (Instant::now(), volume_sync.load(Ordering::SeqCst));
    loop {
        if let Some(s) = Pw::wait(&rx, TICK) {
            return finish(&w, s, &mut running);
        }
        for r in running.iter_mut() {
            r.tick(&w);
        }
        let asked = volume_sync.load(Ordering::SeqCst);
        if asked != synced.1 || synced.0.elapsed() >= VOLUME_SYNC {
            w.with_ctx(|ctx| spec::refresh_volumes(&pod, ctx));
            synced = (Instant::now(), asked);
        }
    }
}

impl Running {
    fn new(c: Container) -> Running {
        Running {
            c,
            state: ContainerState::default(),
            attempt: 0,
            started_at: Instant::now(),
            exited_at: None,
            backoff: None,
            startup: None,
            liveness: None,
            readiness: None,
        }
    }

    fn publish(&self, w: &Pw) {
        let s = self.state.clone();
        w.set(|st| {
            st.containers.insert(self.c.name.clone(), s);
        });
    }

    /// Creates and starts the container (restart number `attempt`).
    fn launch(&mut self, w: &Pw) {
        self.state.waiting = None;
        match w.start(&self.c, self.attempt) {
            Ok(id) => {
                w.event(format!("Started container {}", self.c.name));
                self.state.id = Some(id);
                self.state.started_at = Some(Instant::now());
                self.state.running = true;
                self.state.ready = self.c.readiness_probe.is_none();
                self.state.started = self.c.startup_probe.is_none();
                self.started_at = Instant::now();
                self.exited_at = None;
                self.startup = self
                    .c
                    .startup_probe
                    .as_ref()
                    .map(|p| Prober::new(p, self.started_at));
                self.liveness = self
                    .c
                    .liveness_probe
                    .as_ref()
                    .map(|p| Prober::new(p, self.started_at));
                self.readiness = self
                    .c
                    .readiness_probe
                    .as_ref()
                    .map(|p| Prober::new(p, self.started_at));
            }
            Err(e) => {
                w.event(e);
                self.state.running = false;
                self.exited_at = Some(Instant::now());
            }
        }
        self.publish(w);
    }

    /// When kubelet starts it again after its last failure: at once the first time, then
    /// after the back-off, measured from the exit.
    fn restart_at(&self) -> Instant {
        self.exited_at.unwrap_or_else(Instant::now) + self.backoff.unwrap_or_default()
    }

    /// Marks the wait for a restart, once per failure.
    fn wait_back_off(&mut self, w: &Pw) {
        if self.state.waiting.is_some() || Instant::now() >= self.restart_at() {
            return;
        }
        self.state.waiting = Some("CrashLoopBackOff".into());
        self.state.backoffs += 1;
        w.event(format!(
            "Back-off {}s restarting failed container {}",
            self.backoff.unwrap_or_default().as_secs(),
            self.c.name
        ));
        self.publish(w);
    }

    /// Counts the restart that begins and steps the back-off for the next failure.
    fn restart(&mut self) {
        self.backoff = Some(match self.backoff {
            None => BACKOFF_START,
            Some(d) => (d * 2).min(BACKOFF_MAX),
        });
        self.state.restarts += 1;
        self.attempt += 1;
    }

    /// An init container's wait before its next try; a stop request ends it.
    fn back_off(&mut self, w: &Pw, rx: &Receiver<Stop>) -> Option<Stop> {
        self.wait_back_off(w);
        let until = self.restart_at();
        let now = Instant::now();
        if now < until {
            if let Some(s) = Pw::wait(rx, until - now) {
                return Some(s);
            }
        }
        self.restart();
        None
    }

    /// One look: exit and restart, probes.
    fn tick(&mut self, w: &Pw) {
        if !self.state.running {
            if Instant::now() >= self.restart_at() {
                self.restart();
                self.launch(w);
            } else {
                self.wait_back_off(w);
            }
            return;
        }
        let Some(id) = self.state.id.clone() else {
            return;
        };
        if let Ok(Some(code)) = w.cri.exited(&id) {
            self.on_exit(w, code);
            return;
        }
        if !self.state.started {
            if let Some(p) = self.startup.as_mut() {
                match w.tick_probe(p, &id, &self.c, "Startup") {
                    Some(true) => self.state.started = true,
                    Some(false) => self.kill(w, &id, "failed startup probe"),
                    None => {}
                }
            }
            return;
        }
        if let Some(p) = self.liveness.as_mut() {
            if w.tick_probe(p, &id, &self.c, "Liveness") == Some(false) {
                self.kill(w, &id, "failed liveness probe");
                return;
            }
        }
        let mut why = String::new();
        if let Some(p) = self.readiness.as_mut() {
            let before = self.state.ready;
            match p.tick(|pr| w.run_probe(&id, &self.c, pr), &mut why) {
                Some(ok) => self.state.ready = ok,
                None if !why.is_empty() && !before => {}
                None => {}
            }
            if before != self.state.ready {
                if !self.state.ready {
                    w.event(format!("Readiness probe failed: {why}"));
                }
                self.publish(w);
            }
        }
    }

    fn on_exit(&mut self, w: &Pw, code: i32) {
        self.state.running = false;
        self.state.ready = false;
        self.state.last_exit = Some(code);
        let now = Instant::now();
        // A container that ran long enough starts its back-off afresh.
        if now.duration_since(self.started_at) >= BACKOFF_RESET {
            self.backoff = None;
        }
        self.exited_at = Some(now);
        w.event(format!("Container {} exited {code}", self.c.name));
        self.wait_back_off(w);
        self.publish(w);
    }

    /// Stops the container (its grace period) for a failed probe; it is restarted.
    fn kill(&mut self, w: &Pw, id: &str, why: &str) {
        w.event(format!(
            "Killing container {}: {why}, will be restarted",
            self.c.name
        ));
        let _ = w.cri.stop_container(id, grace(&w.pod));
        let code = w.cri.exited(id).ok().flatten().unwrap_or(137);
        self.on_exit(w, code);
    }
}

fn grace(pod: &Pod) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
}

/// The end of a worker: a deleted pod's containers and sandbox are stopped and removed;
/// an abandoned one is left as the node's death left it.
fn finish(w: &Pw, stop: Stop, running: &mut [Running]) {
    if let Stop::Abandon = stop {
        return;
    }
    let g = grace(&w.pod);
    for r in running.iter() {
        if let Some(id) = &r.state.id {
            let _ = w.cri.stop_container(id, g);
            let _ = w.cri.remove_container(id);
        }
    }
    let _ = w.cri.stop_pod(&w.sandbox);
    let _ = w.cri.remove_pod(&w.sandbox);
    w.event("Deleted".into());
    w.set(|st| {
        st.gone = true;
        for c in st.containers.values_mut() {
            c.running = false;
            c.ready = false;
        }
    });
}
