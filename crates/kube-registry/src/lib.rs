//! ferry's registry in the Kubernetes API (`--datastore kubernetes`): a node's pod subnets
//! are its Node's `spec.podCIDRs`, given by the controller-manager; what the other nodes
//! need to reach them (underlay address, VTEP MAC) the node's daemon publishes as
//! annotations on its own Node ([`annotations`]). Every Node is judged with the same
//! checks and conflict rule as an etcd lease record ([`entry`]), so that the daemon's view
//! of its peers is one thing whichever datastore fed it.
//!
//! [`entry`] is pure (tested without an API); [`client`] talks to the API.

pub mod annotations;
pub mod client;
pub mod entry;
pub mod slim;

pub use entry::{judge_all, own_record, Judged, NodeEntry, NodesView, Pending};
