//! A kubelet stand-in: the calls a kubelet makes to bring a pod's network up and down,
//! over the CRI v1 gRPC API on the runtime's unix socket.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerState, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, LinuxPodSandboxConfig, ListPodSandboxRequest,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxState, PodSandboxStatusRequest, PortMapping,
    Protocol, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StatusRequest, StopContainerRequest, StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

/// What a pod spec asks of the network: its identity and its `hostPort`s.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// (hostPort, containerPort), TCP.
    pub host_ports: Vec<(u16, u16)>,
}

impl PodSpec {
    pub fn new(namespace: &str, name: &str) -> PodSpec {
        PodSpec {
            namespace: namespace.into(),
            name: name.into(),
            uid: format!("uid-{namespace}-{name}"),
            host_ports: Vec::new(),
        }
    }
}

impl Cri {
    /// Connects to the runtime at `sock` (the connection is made lazily, per call).
    pub fn connect(sock: &Path) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let sock: PathBuf = sock.to_path_buf();
        // The lazy channel starts its worker at once: it must be made inside the runtime.
        let client = rt.block_on(async {
            let channel = Endpoint::from_static("http://cri.invalid").connect_with_connector_lazy(
                tower::service_fn(move |_: Uri| {
                    let sock = sock.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(sock).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(s))
                    }
                }),
            );
            RuntimeServiceClient::new(channel)
        });
        Cri { rt, client }
    }

    /// The runtime's `NetworkReady` condition: (status, "reason: message").
    pub fn network_ready(&self) -> Result<(bool, String), tonic::Status> {
        let mut c = self.client.clone();
        let r = self
            .rt
            .block_on(c.status(StatusRequest { verbose: false }))?
            .into_inner();
        let cond = r
            .status
            .and_then(|s| {
                s.conditions
                    .into_iter()
                    .find(|c| c.r#type == "NetworkReady")
            })
            .ok_or_else(|| tonic::Status::not_found("no NetworkReady condition"))?;
        Ok((cond.status, format!("{}: {}", cond.reason, cond.message)))
    }

    /// The CNI network the runtime has loaded, (name, cniVersion), from containerd's
    /// verbose status: which of several configs it will use, and when a change took.
    pub fn cni_network(&self) -> Option<(String, String)> {
        let mut c = self.client.clone();
        let r = self
            .rt
            .block_on(c.status(StatusRequest { verbose: true }))
            .ok()?
            .into_inner();
        let conf: serde_json::Value = serde_json::from_str(r.info.get("cniconfig")?).ok()?;
        conf["Networks"]
            .as_array()?
            .iter()
            .map(|n| &n["Config"])
            .find(|c| c["Name"] != "cni-loopback")
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                (s("Name"), s("CNIVersion"))
            })
    }

    pub fn config(spec: &PodSpec) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: 0,
            }),
            hostname: spec.name.clone(),
            port_mappings: spec
                .host_ports
                .iter()
                .map(|&(host, container)| PortMapping {
                    protocol: Protocol::Tcp as i32,
                    container_port: i32::from(container),
                    host_port: i32::from(host),
                    host_ip: String::new(),
                })
                .collect(),
            linux: Some(LinuxPodSandboxConfig::default()),
            ..Default::default()
        }
    }

    /// RunPodSandbox: the pod's sandbox and, through the runtime's CNI, its network.
    pub fn run_pod(&self, spec: &PodSpec) -> Result<String, tonic::Status> {
        self.run_sandbox(Self::config(spec))
    }

    /// RunPodSandbox with a whole sandbox config (a host-network pod's, say).
    pub fn run_sandbox(&self, config: PodSandboxConfig) -> Result<String, tonic::Status> {
        let mut c = self.client.clone();
        let r = self.rt.block_on(c.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        }))?;
        Ok(r.into_inner().pod_sandbox_id)
    }

    /// CreateContainer in a sandbox made with `sandbox`, as kubelet sends both.
    pub fn create_container(
        &self,
        pod: &str,
        config: ContainerConfig,
        sandbox: PodSandboxConfig,
    ) -> Result<String, tonic::Status> {
        let mut c = self.client.clone();
        let r = self
            .rt
            .block_on(c.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config),
                sandbox_config: Some(sandbox),
            }))?;
        Ok(r.into_inner().container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.client.clone();
        self.rt.block_on(c.start_container(StartContainerRequest {
            container_id: id.into(),
        }))?;
        Ok(())
    }

    pub fn container_status(&self, id: &str) -> Result<ContainerStatus, tonic::Status> {
        let mut c = self.client.clone();
        let r = self
            .rt
            .block_on(c.container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            }))?
            .into_inner();
        r.status
            .ok_or_else(|| tonic::Status::not_found(format!("no status for container {id}")))
    }

    /// Whether the container has exited, and with which code.
    pub fn exited(&self, id: &str) -> Result<Option<i32>, tonic::Status> {
        let st = self.container_status(id)?;
        Ok((st.state == ContainerState::ContainerExited as i32).then_some(st.exit_code))
    }

    /// StopContainer: SIGTERM (the image's stop signal), SIGKILL after `grace` seconds.
    pub fn stop_container(&self, id: &str, grace: i64) -> Result<(), tonic::Status> {
        let mut c = self.client.clone();
        self.rt.block_on(c.stop_container(StopContainerRequest {
            container_id: id.into(),
            timeout: grace,
        }))?;
        Ok(())
    }

    pub fn remove_container(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.client.clone();
        self.rt
            .block_on(c.remove_container(RemoveContainerRequest {
                container_id: id.into(),
            }))?;
        Ok(())
    }

    /// ExecSync: (exit code, stdout, stderr) of `cmd` run in the container.
    pub fn exec(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_secs: i64,
    ) -> Result<(i32, String, String), tonic::Status> {
        let mut c = self.client.clone();
        let r = self
            .rt
            .block_on(c.exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: timeout_secs,
            }))?
            .into_inner();
        Ok((
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        ))
    }

    /// The sandboxes that are not ready (what a kubelet stops and removes after a reboot).
    pub fn not_ready_pods(&self) -> Result<Vec<String>, tonic::Status> {
        let mut c = self.client.clone();
        let r = self
            .rt
            .block_on(c.list_pod_sandbox(ListPodSandboxRequest { filter: None }))?;
        Ok(r.into_inner()
            .items
            .into_iter()
            .filter(|p| p.state != PodSandboxState::SandboxReady as i32)
            .map(|p| p.id)
            .collect())
    }

    /// StopPodSandbox: CNI DEL with the cached prevResult.
    pub fn stop_pod(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.client.clone();
        self.rt.block_on(c.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        }))?;
        Ok(())
    }

    /// RemovePodSandbox: a second DEL, with no netns and no prevResult.
    pub fn remove_pod(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.client.clone();
        self.rt
            .block_on(c.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))?;
        Ok(())
    }

    /// Every sandbox the runtime knows, in any state (what kubelet's garbage collection
    /// walks).
    pub fn list_pods(&self) -> Result<Vec<String>, tonic::Status> {
        let mut c = self.client.clone();
        let r = self
            .rt
            .block_on(c.list_pod_sandbox(ListPodSandboxRequest { filter: None }))?;
        Ok(r.into_inner().items.into_iter().map(|p| p.id).collect())
    }

    /// The sandbox's IP as the runtime reports it, and the PID of its first process
    /// (from the verbose info), through which a test enters the pod's network namespace.
    pub fn pod_status(&self, id: &str) -> Result<(String, u32), tonic::Status> {
        let mut c = self.client.clone();
        let r = self
            .rt
            .block_on(c.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            }))?
            .into_inner();
        let ip = r
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        let info: serde_json::Value = r
            .info
            .get("info")
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or_default();
        let pid = info["pid"].as_u64().unwrap_or(0) as u32;
        Ok((ip, pid))
    }
}
