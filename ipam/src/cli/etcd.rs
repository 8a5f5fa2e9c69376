//! Running a command's etcd requests.

use anyhow::Result;

pub use ferry_registry::EtcdArgs;

/// A runtime for one command's etcd requests.
pub fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}
