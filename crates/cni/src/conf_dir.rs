//! A runtime's CNI config directory as libcni reads it: the network config files are
//! those of these extensions, and the runtime uses the one whose name sorts first
//! (bytewise). `ferry-overlayd` installs ferry's under a name that sorts early and warns
//! of any that sorts before it; `ferry-ipam doctor` reports them: one rule for both.

use std::ffi::OsStr;
use std::path::Path;

/// The config ferry installs in the runtime's config directory.
pub const CONFLIST_NAME: &str = "00-ferry.conflist";

/// The files a runtime takes for network configs (libcni's `ConfFiles`).
pub const CONFIG_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// Whether a file of this name is a network config at all.
pub fn is_config(name: &OsStr) -> bool {
    Path::new(name)
        .extension()
        .and_then(|x| x.to_str())
        .is_some_and(|x| CONFIG_EXTENSIONS.contains(&x))
}

/// Whether a file of this name is a network config that sorts before ferry's.
pub fn sorts_first(name: &OsStr) -> bool {
    is_config(name) && name.as_encoded_bytes() < CONFLIST_NAME.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_that_sort_first_are_found() {
        for first in [
            "00-calico.conflist",
            "0-x.conf",
            ".hidden.json",
            "00-ab.json",
        ] {
            assert!(sorts_first(first.as_ref()), "{first}");
        }
        for later in [
            CONFLIST_NAME,
            "05-cilium.conflist",
            "10-calico.conflist",
            "10-containerd-net.conflist",
            "000-x.conf",
            "00-calico.conflist.bak",
            "README",
            ".00-ferry.conflist.1.tmp",
        ] {
            assert!(!sorts_first(later.as_ref()), "{later}");
        }
    }
}
