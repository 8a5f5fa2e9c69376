//! Mapping kernel failures to CNI errors.

use cni::{Code, Error};

pub fn err(e: netlink::Error) -> Error {
    Error::new(Code::Kernel, e.to_string())
}

/// A current-thread runtime: the plugin enters the pod's namespace on this thread to open
/// its netlink socket, so nothing may run on another one.
pub fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| {
            Error::new(Code::Kernel, "cannot start the netlink runtime").with_details(e.to_string())
        })
}
