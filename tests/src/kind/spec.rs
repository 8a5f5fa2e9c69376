//! A pod spec as kubelet turns it into CRI requests: the sandbox config, and for each
//! container its command and args with `$(VAR)` expanded, its environment (downward API,
//! ConfigMap and Secret keys, the `kubernetes` Service's variables), its mounts (hostPath,
//! ConfigMap, Secret, emptyDir and the service account's token), and its security context
//! (capabilities, privileged, read-only root, no_new_privs, and the masked and read-only
//! /proc paths kubelet sends for every container). ConfigMap and Secret volumes are laid
//! out as kubelet's atomic writer lays them out (`..data`), so that [`refresh_volumes`]
//! can update them under running containers.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Pod, Secret, Volume};

/// What kubelet reads besides the pod: the node, the cluster's objects, the API's address.
pub struct Context<'a> {
    pub node_name: &'a str,
    /// The node's addresses, its primary (`status.hostIP`) first.
    pub node_ips: &'a [String],
    pub config_maps: &'a [ConfigMap],
    pub secrets: &'a [Secret],
    /// `KUBERNETES_SERVICE_HOST` and `_PORT`: the `kubernetes` Service's ClusterIP.
    pub api_service: (&'a str, u16),
    /// The service account token and CA an in-cluster client reads, when the pod mounts
    /// them (the API stand-in's).
    pub token: Option<(&'a str, &'a str)>,
    /// Where kubelet keeps the pod's volumes, as the host reaches the node's
    /// `/var/lib/kubelet/pods` (the node's own path is `node_pods`).
    pub pods_dir: &'a Path,
    pub node_pods: &'a Path,
    /// The node's root as the host reaches it (`/proc/<pid>/root`): hostPath volumes of
    /// type `…OrCreate` are made there.
    pub node_root: &'a Path,
    /// Image names as the manifests say them, to the images the node has.
    pub images: &'a BTreeMap<String, String>,
}

/// Kubelet's default masked and read-only paths (`pkg/securitycontext`), sent for every
/// container; the runtime ignores them for a privileged one.
const MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READ_ONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Where kubelet mounts a service account's token.
pub const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

pub fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

fn meta(pod: &Pod) -> (&str, &str, &str) {
    let m = &pod.metadata;
    (
        m.namespace.as_deref().unwrap_or("default"),
        m.name.as_deref().unwrap_or_default(),
        m.uid.as_deref().unwrap_or_default(),
    )
}

/// The pod's log directory, as kubelet names it.
pub fn log_dir(pod: &Pod) -> String {
    let (ns, name, uid) = meta(pod);
    format!("/var/log/pods/{ns}_{name}_{uid}")
}

pub fn sandbox_config(pod: &Pod, attempt: u32) -> cri::PodSandboxConfig {
    let (ns, name, uid) = meta(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let privileged = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .any(|c| {
            c.security_context
                .as_ref()
                .and_then(|s| s.privileged)
                .unwrap_or(false)
        });
    let network = if host_network(pod) {
        cri::NamespaceMode::Node
    } else {
        cri::NamespaceMode::Pod
    };
    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let host = p.host_port?;
            Some(cri::PortMapping {
                protocol: cri::Protocol::Tcp as i32,
                container_port: p.container_port,
                host_port: host,
                host_ip: p.host_ip.clone().unwrap_or_default(),
            })
        })
        .collect();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: ns.into(),
            attempt,
        }),
        hostname: if host_network(pod) {
            String::new()
        } else {
            name.into()
        },
        log_directory: log_dir(pod),
        port_mappings,
        labels: pod
            .metadata
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: network as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                privileged,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Why a container cannot be made yet (kubelet's `CreateContainerConfigError`): it
/// retries, as kubelet does, until the object appears.
#[derive(Debug)]
pub struct NotYet(pub String);

/// `$(VAR)` expanded as kubelet expands it: a defined variable is replaced, `$$` is a
/// literal `$`, anything else stays as written.
pub fn expand(s: &str, vars: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match vars.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn config_map<'a>(ctx: &'a Context, ns: &str, name: &str) -> Option<&'a ConfigMap> {
    ctx.config_maps.iter().find(|c| {
        c.metadata.name.as_deref() == Some(name)
            && c.metadata.namespace.as_deref().unwrap_or("default") == ns
    })
}

fn secret<'a>(ctx: &'a Context, ns: &str, name: &str) -> Option<&'a Secret> {
    ctx.secrets.iter().find(|s| {
        s.metadata.name.as_deref() == Some(name)
            && s.metadata.namespace.as_deref().unwrap_or("default") == ns
    })
}

/// The `kubernetes` Service's variables, which kubelet gives every container.
fn service_env(ctx: &Context) -> Vec<(String, String)> {
    let (host, port) = ctx.api_service;
    let url_host = crate::cluster::url_host(host);
    vec![
        ("KUBERNETES_SERVICE_HOST".into(), host.into()),
        ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.to_string()),
        ("KUBERNETES_PORT".into(), format!("tcp://{url_host}:{port}")),
        (
            format!("KUBERNETES_PORT_{port}_TCP"),
            format!("tcp://{url_host}:{port}"),
        ),
        (format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into()),
        (format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.to_string()),
        (format!("KUBERNETES_PORT_{port}_TCP_ADDR"), host.into()),
    ]
}

/// A downward-API field of the pod.
fn field(pod: &Pod, ctx: &Context, path: &str, pod_ip: &str) -> Result<String, NotYet> {
    let (ns, name, uid) = meta(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    Ok(match path {
        "metadata.name" => name.into(),
        "metadata.namespace" => ns.into(),
        "metadata.uid" => uid.into(),
        "spec.nodeName" => ctx.node_name.into(),
        "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
        "status.hostIP" => ctx.node_ips.first().cloned().unwrap_or_default(),
        "status.hostIPs" => ctx.node_ips.join(","),
        "status.podIP" => pod_ip.split(',').next().unwrap_or_default().into(),
        "status.podIPs" => pod_ip.into(),
        other => return Err(NotYet(format!("fieldRef {other} is not served here"))),
    })
}

/// The container's environment, in kubelet's order: the Service variables, then each
/// `env` entry (whose `$(VAR)` may name an earlier one).
pub fn env(
    pod: &Pod,
    c: &Container,
    ctx: &Context,
    pod_ip: &str,
) -> Result<Vec<(String, String)>, NotYet> {
    let (ns, _, _) = meta(pod);
    let mut vars = service_env(ctx);
    for e in c.env.iter().flatten() {
        if let Some(v) = value(pod, c, e, ctx, ns, pod_ip, &vars)? {
            vars.retain(|(k, _)| k != &e.name);
            vars.push((e.name.clone(), v));
        }
    }
    Ok(vars)
}

fn value(
    pod: &Pod,
    c: &Container,
    e: &EnvVar,
    ctx: &Context,
    ns: &str,
    pod_ip: &str,
    vars: &[(String, String)],
) -> Result<Option<String>, NotYet> {
    if let Some(v) = &e.value {
        return Ok(Some(expand(v, vars)));
    }
    let Some(from) = &e.value_from else {
        return Ok(Some(String::new()));
    };
    if let Some(f) = &from.field_ref {
        return field(pod, ctx, &f.field_path, pod_ip).map(Some);
    }
    // A key missing from its ConfigMap or Secret (or the object itself): no variable when
    // the reference is optional, else the container waits (kubelet's
    // CreateContainerConfigError).
    let key_ref =
        |found: Option<String>, optional: Option<bool>, kind: &str, name: &str, key: &str| {
            match found {
                Some(v) => Ok(Some(v)),
                None if optional.unwrap_or(false) => Ok(None),
                None => Err(NotYet(format!(
                    "{}: couldn't find key {key} in {kind} {ns}/{name}",
                    c.name
                ))),
            }
        };
    if let Some(k) = &from.config_map_key_ref {
        let found =
            config_map(ctx, ns, &k.name).and_then(|cm| cm.data.as_ref()?.get(&k.key).cloned());
        return key_ref(found, k.optional, "ConfigMap", &k.name, &k.key);
    }
    if let Some(k) = &from.secret_key_ref {
        let found = secret(ctx, ns, &k.name)
            .and_then(|s| s.data.as_ref()?.get(&k.key).cloned())
            .map(|b| String::from_utf8_lossy(&b.0).into_owned());
        return key_ref(found, k.optional, "Secret", &k.name, &k.key);
    }
    Err(NotYet(format!(
        "{}: env {} has a source not served here",
        c.name, e.name
    )))
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), NotYet> {
    let io = |e: std::io::Error| NotYet(format!("write {}: {e}", path.display()));
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io)?;
    }
    std::fs::write(path, data).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)
}

/// Each of the pod's volumes as a path of the node, made ready as kubelet makes it.
pub fn volumes(pod: &Pod, ctx: &Context) -> Result<BTreeMap<String, String>, NotYet> {
    let (ns, _, uid) = meta(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let mut out = BTreeMap::new();
    for v in spec.volumes.iter().flatten() {
        out.insert(v.name.clone(), volume(v, ctx, ns, uid)?);
    }
    let automount = spec.automount_service_account_token.unwrap_or(true);
    if automount {
        if let Some((token, ca)) = ctx.token {
            let rel = format!("{uid}/volumes/kubernetes.io~projected/kube-api-access");
            let dir = ctx.pods_dir.join(&rel);
            crate::kapi::write_service_account_dir(&dir, token, ca, ns)
                .map_err(|e| NotYet(format!("service account volume: {e}")))?;
            out.insert(
                "kube-api-access".into(),
                ctx.node_pods.join(rel).display().to_string(),
            );
        }
    }
    Ok(out)
}

fn volume(v: &Volume, ctx: &Context, ns: &str, uid: &str) -> Result<String, NotYet> {
    if let Some(h) = &v.host_path {
        let on_node = ctx.node_root.join(h.path.trim_start_matches('/'));
        let io = |e: std::io::Error| NotYet(format!("hostPath {}: {e}", h.path));
        match h.type_.as_deref().unwrap_or("") {
            "DirectoryOrCreate" => std::fs::create_dir_all(&on_node).map_err(io)?,
            "FileOrCreate" if !on_node.exists() => {
                if let Some(d) = on_node.parent() {
                    std::fs::create_dir_all(d).map_err(io)?;
                }
                std::fs::write(&on_node, b"").map_err(io)?;
            }
            "Directory" if !on_node.is_dir() => {
                return Err(NotYet(format!(
                    "hostPath type check failed: {} is not a directory",
                    h.path
                )))
            }
            "File" if !on_node.is_file() => {
                return Err(NotYet(format!(
                    "hostPath type check failed: {} is not a file",
                    h.path
                )))
            }
            _ => {}
        }
        return Ok(h.path.clone());
    }
    let kind_dir = |kind: &str| {
        let rel = format!("{uid}/volumes/kubernetes.io~{kind}/{}", v.name);
        (
            ctx.pods_dir.join(&rel),
            ctx.node_pods.join(rel).display().to_string(),
        )
    };
    if let Some(c) = &v.config_map {
        let (dir, on_node) = kind_dir("configmap");
        let optional = c.optional.unwrap_or(false);
        let data = match config_map(ctx, ns, &c.name) {
            Some(cm) => cm.data.clone().unwrap_or_default(),
            None if optional => Default::default(),
            None => return Err(NotYet(format!("configmap \"{}\" not found", c.name))),
        };
        let mode = c.default_mode.unwrap_or(0o644) as u32;
        let payload = payload(
            c.items.as_deref(),
            data.into_iter().map(|(k, v)| (k, v.into_bytes())),
            mode,
        )?;
        atomic_write(&dir, &payload)?;
        return Ok(on_node);
    }
    if let Some(s) = &v.secret {
        let (dir, on_node) = kind_dir("secret");
        let name = s.secret_name.clone().unwrap_or_default();
        let optional = s.optional.unwrap_or(false);
        let data = match secret(ctx, ns, &name) {
            Some(sec) => sec.data.clone().unwrap_or_default(),
            None if optional => Default::default(),
            None => return Err(NotYet(format!("secret \"{name}\" not found"))),
        };
        let mode = s.default_mode.unwrap_or(0o644) as u32;
        let payload = payload(
            s.items.as_deref(),
            data.into_iter().map(|(k, v)| (k, v.0)),
            mode,
        )?;
        atomic_write(&dir, &payload)?;
        return Ok(on_node);
    }
    if v.empty_dir.is_some() {
        let (dir, on_node) = kind_dir("empty-dir");
        std::fs::create_dir_all(&dir).map_err(|e| NotYet(format!("{}: {e}", dir.display())))?;
        return Ok(on_node);
    }
    Err(NotYet(format!("volume {}: a kind not served here", v.name)))
}

/// A ConfigMap's or Secret's keys (or the listed `items`): each file's path in the volume,
/// content and mode.
type Payload = BTreeMap<String, (Vec<u8>, u32)>;

fn payload(
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
    data: impl Iterator<Item = (String, Vec<u8>)>,
    mode: u32,
) -> Result<Payload, NotYet> {
    let data: BTreeMap<String, Vec<u8>> = data.collect();
    let mut out = Payload::new();
    match items {
        Some(items) => {
            for it in items {
                let bytes = data
                    .get(&it.key)
                    .ok_or_else(|| NotYet(format!("key {} not found", it.key)))?;
                let m = it.mode.map(|m| m as u32).unwrap_or(mode);
                out.insert(it.path.clone(), (bytes.clone(), m));
            }
        }
        None => {
            for (k, b) in data {
                out.insert(k, (b, mode));
            }
        }
    }
    Ok(out)
}

/// Whether the volume's current data (through `..data`) is `payload`, file for file.
fn holds(dir: &Path, payload: &Payload) -> bool {
    let data = dir.join("..data");
    let same = payload.iter().all(|(path, (bytes, mode))| {
        let file = data.join(path);
        std::fs::read(&file).is_ok_and(|b| &b == bytes)
            && std::fs::metadata(&file).is_ok_and(|m| m.permissions().mode() & 0o7777 == *mode)
    });
    let top: std::collections::BTreeSet<&str> = payload.keys().map(|p| top_name(p)).collect();
    let listed = std::fs::read_dir(&data).map(|d| {
        d.flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with(".."))
            .count()
    });
    same && listed.is_ok_and(|n| n == top.len())
}

fn top_name(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

/// Writes `payload` into the volume directory `dir` as kubelet's atomic writer does: the
/// files in a new timestamped `..<time>` directory, `..data` swapped to it with one rename,
/// each top-level name a symlink through `..data`. The directory itself stays (the
/// containers bind-mount it), so a container sees the old files or the new ones, never a
/// mix; nothing is written when the volume already holds `payload`.
fn atomic_write(dir: &Path, payload: &Payload) -> Result<(), NotYet> {
    let io = |what: &Path, e: std::io::Error| NotYet(format!("{}: {e}", what.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    if holds(dir, payload) {
        return Ok(());
    }
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let stamp = k8s_openapi::jiff::Timestamp::from_second(now.as_secs() as i64)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y_%m_%d_%H_%M_%S")
        .to_string();
    let ts = format!("..{stamp}.{}{n}", now.subsec_nanos());
    let new = dir.join(&ts);
    std::fs::create_dir(&new).map_err(|e| io(&new, e))?;
    for (path, (bytes, mode)) in payload {
        write_file(&new.join(path), bytes, *mode)?;
    }
    let link = dir.join("..data");
    let old = std::fs::read_link(&link).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&ts, &tmp).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &link).map_err(|e| io(&link, e))?;
    let top: std::collections::BTreeSet<&str> = payload.keys().map(|p| top_name(p)).collect();
    for name in &top {
        let user = dir.join(name);
        let linked = std::fs::symlink_metadata(&user).is_ok_and(|m| m.file_type().is_symlink());
        if !linked {
            let _ = std::fs::remove_dir_all(&user);
            let _ = std::fs::remove_file(&user);
            std::os::unix::fs::symlink(Path::new("..data").join(name), &user)
                .map_err(|e| io(&user, e))?;
        }
    }
    // Names the new data no longer has: their links would dangle.
    for e in std::fs::read_dir(dir).map_err(|e| io(dir, e))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !top.contains(name.as_str()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(old) = old.filter(|o| *o != Path::new(&ts)) {
        let old = dir.join(old);
        std::fs::remove_dir_all(&old).map_err(|e| io(&old, e))?;
    }
    Ok(())
}

/// The pod's ConfigMap and Secret volumes written again from the objects as they are now,
/// as kubelet's periodic sync does (each only when its content changed). A volume whose
/// object is gone keeps its last content, as kubelet keeps it.
pub fn refresh_volumes(pod: &Pod, ctx: &Context) {
    let (ns, _, uid) = meta(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    for v in spec.volumes.iter().flatten() {
        if v.config_map.is_some() || v.secret.is_some() {
            let _ = volume(v, ctx, ns, uid);
        }
    }
}

/// The container's mounts: its `volumeMounts` (paths of the node), and the service
/// account's token when the pod has one.
fn mounts(c: &Container, vols: &BTreeMap<String, String>) -> Result<Vec<cri::Mount>, NotYet> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let host = vols
            .get(&m.name)
            .ok_or_else(|| NotYet(format!("{}: no volume {}", c.name, m.name)))?;
        let propagation = match m.mount_propagation.as_deref() {
            Some("HostToContainer") => cri::MountPropagation::PropagationHostToContainer,
            Some("Bidirectional") => cri::MountPropagation::PropagationBidirectional,
            _ => cri::MountPropagation::PropagationPrivate,
        };
        out.push(cri::Mount {
            container_path: m.mount_path.clone(),
            host_path: host.clone(),
            readonly: m.read_only.unwrap_or(false),
            propagation: propagation as i32,
            ..Default::default()
        });
    }
    if let Some(host) = vols.get("kube-api-access") {
        out.push(cri::Mount {
            container_path: SA_DIR.into(),
            host_path: host.clone(),
            readonly: true,
            ..Default::default()
        });
    }
    Ok(out)
}

fn security(c: &Container, pod: &Pod) -> cri::LinuxContainerSecurityContext {
    let sc = c.security_context.clone().unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    let network = if host_network(pod) {
        cri::NamespaceMode::Node
    } else {
        cri::NamespaceMode::Pod
    };
    cri::LinuxContainerSecurityContext {
        capabilities: Some(cri::Capability {
            add_capabilities: caps.add.unwrap_or_default(),
            drop_capabilities: caps.drop.unwrap_or_default(),
            ..Default::default()
        }),
        privileged: sc.privileged.unwrap_or(false),
        namespace_options: Some(cri::NamespaceOption {
            network: network as i32,
            pid: cri::NamespaceMode::Container as i32,
            ipc: cri::NamespaceMode::Pod as i32,
            ..Default::default()
        }),
        run_as_user: sc.run_as_user.map(|v| cri::Int64Value { value: v }),
        run_as_group: sc.run_as_group.map(|v| cri::Int64Value { value: v }),
        readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
        // kubelet sets no_new_privs only when allowPrivilegeEscalation is false.
        no_new_privs: sc.allow_privilege_escalation == Some(false),
        masked_paths: MASKED.iter().map(|s| s.to_string()).collect(),
        readonly_paths: READ_ONLY.iter().map(|s| s.to_string()).collect(),
        // Unconfined, kubelet's default without a seccompProfile (kind does not turn on
        // --seccomp-default).
        seccomp: Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::Unconfined as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The CreateContainer config of `c` (restart number `attempt`).
pub fn container_config(
    pod: &Pod,
    c: &Container,
    ctx: &Context,
    vols: &BTreeMap<String, String>,
    attempt: u32,
    pod_ip: &str,
) -> Result<cri::ContainerConfig, NotYet> {
    let vars = env(pod, c, ctx, pod_ip)?;
    let image = c.image.clone().unwrap_or_default();
    let image = ctx
        .images
        .iter()
        .find(|(from, _)| image == **from || image.starts_with(&format!("{from}:")))
        .map(|(_, to)| to.clone())
        .ok_or_else(|| NotYet(format!("{}: image {image} is not on the node", c.name)))?;
    Ok(cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: c.name.clone(),
            attempt,
        }),
        image: Some(cri::ImageSpec {
            image,
            ..Default::default()
        }),
        command: c
            .command
            .iter()
            .flatten()
            .map(|a| expand(a, &vars))
            .collect(),
        args: c.args.iter().flatten().map(|a| expand(a, &vars)).collect(),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: vars
            .into_iter()
            .map(|(key, value)| cri::KeyValue { key, value })
            .collect(),
        mounts: mounts(c, vols)?,
        log_path: format!("{}/{attempt}.log", c.name),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(security(c, pod)),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A container log in the CRI format, as text: each line's message.
pub fn log_text(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            // "<time> <stream> <P|F> <message>"
            let mut parts = l.splitn(4, ' ');
            let _time = parts.next()?;
            let _stream = parts.next()?;
            let _tag = parts.next()?;
            Some(parts.next().unwrap_or_default())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The node path of container `name`'s log, restart `attempt`.
pub fn log_path(pod: &Pod, name: &str, attempt: u32) -> PathBuf {
    PathBuf::from(log_dir(pod))
        .join(name)
        .join(format!("{attempt}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_is_kubelets() {
        let vars = vec![("A".to_string(), "1".to_string()), ("B".into(), "x".into())];
        assert_eq!(expand("http://$(A):6666", &vars), "http://1:6666");
        assert_eq!(expand("$(C)-$(B)", &vars), "$(C)-x");
        assert_eq!(expand("$$(A) $ $(", &vars), "$(A) $ $(");
    }

    #[test]
    fn a_volume_is_rewritten_as_kubelets_atomic_writer_does() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("vol");
        let one: Payload = [
            ("a".to_string(), (b"1".to_vec(), 0o644)),
            ("b".to_string(), (b"2".to_vec(), 0o400)),
        ]
        .into();
        atomic_write(&dir, &one).expect("write");
        let inode = std::fs::metadata(&dir).expect("dir").ino();
        let first = std::fs::read_link(dir.join("..data")).expect("..data");
        assert_eq!(
            std::fs::read_link(dir.join("a")).expect("link"),
            Path::new("..data/a")
        );
        assert_eq!(std::fs::read(dir.join("b")).expect("b"), b"2");
        // The same content: nothing written.
        atomic_write(&dir, &one).expect("write");
        assert_eq!(
            std::fs::read_link(dir.join("..data")).expect("..data"),
            first
        );
        // Changed: a new ..data in the same directory, the old data and names gone.
        let two: Payload = [("a".to_string(), (b"3".to_vec(), 0o644))].into();
        atomic_write(&dir, &two).expect("write");
        assert_eq!(std::fs::metadata(&dir).expect("dir").ino(), inode);
        assert_ne!(
            std::fs::read_link(dir.join("..data")).expect("..data"),
            first
        );
        assert_eq!(std::fs::read(dir.join("a")).expect("a"), b"3");
        assert!(std::fs::symlink_metadata(dir.join("b")).is_err());
        assert!(!dir.join(&first).exists());
    }
}
