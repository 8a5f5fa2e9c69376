//! The Node annotations ferry writes, all under one prefix so that an operator finds (and
//! removes) them together: `kubectl annotate node --all ferry.dev/public-ip- …`.

/// Every key ferry writes starts with this.
pub const PREFIX: &str = "ferry.dev/";
/// The address other nodes send this node's pods' traffic to (VXLAN, or the next hop
/// with DirectRouting). Must be one of the Node's `status.addresses`.
pub const PUBLIC_IP: &str = "ferry.dev/public-ip";
/// The VXLAN device's MAC, `aa:bb:cc:dd:ee:ff`.
pub const VTEP_MAC: &str = "ferry.dev/vtep-mac";
/// `{"used":N,"capacity":M}`: pod addresses in use, published when it changed, at most
/// every [`USAGE_EVERY`](crate::client::USAGE_EVERY).
pub const USAGE: &str = "ferry.dev/usage";

/// Every key, for the uninstall and the docs' table.
pub const ALL: [&str; 3] = [PUBLIC_IP, VTEP_MAC, USAGE];
