//! Kubelet's path to ferry: containerd's CRI, as the kind nodes (`crate::kind`) use it:
//! the CRI client, the pause image, OCI image tars, and the processes of a node made of
//! namespaces.

pub mod client;
pub mod image;
pub mod oci;
pub mod procs;

pub use client::{Cri, PodSpec};
