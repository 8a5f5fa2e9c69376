//! The CNI protocol (spec 1.1.0, answering configs of 0.3.0 and later) shared by the
//! `ferry` plugin and the `ferry-ipam` IPAM plugin.

pub mod conf;
pub mod conf_dir;
pub mod delegate;
pub mod env;
pub mod error;
pub mod reply;
pub mod result;
pub mod skel;
pub mod version;

pub use conf::{Attachment, NetConf};
pub use env::{Command, Env, K8sPod};
pub use error::{Code, Error};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
