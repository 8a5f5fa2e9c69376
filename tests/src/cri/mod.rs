//! Kubelet's path to ferry: containerd's CRI on nodes made of namespaces.

pub mod client;
pub mod image;
pub mod node;
pub mod oci;
pub mod procs;

pub use client::{Cri, PodSpec};
pub use node::{wait_converged, CriNode, CriPod, Leftovers};
