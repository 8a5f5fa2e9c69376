//! ferry run the way its users run it: kind-like nodes (a private containerd per node,
//! driven by a kubelet stand-in), ferry's image built from the Dockerfile's own recipe,
//! and the shipped manifests applied as `kubectl apply -k` applies them. See
//! [`cluster`] for what the test plays of Kubernetes' control plane, and what it cannot.

pub mod cluster;
pub mod image;
pub mod kubelet;
pub mod kustomize;
pub mod node;
pub mod proxy;
pub mod spec;

pub use cluster::{Family, Install, KindCluster};
pub use node::{Backend, KindNode};
