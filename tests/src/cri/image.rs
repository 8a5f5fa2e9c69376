//! The pause image, from the project's own source (`tests/pause/pause.c`): compiled
//! static, packed into a one-layer OCI image layout tar that `ctr images import` takes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::cri::oci;

pub const IMAGE: &str = "ferry.test/pause:1";

/// Builds the image tar once per test process, under `target/` (the same bytes every
/// time: parallel test processes each write their own and rename it into place).
pub fn pause_tar() -> &'static Path {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let dir = crate::manifest::repo().join("target/ferry-pause");
        std::fs::create_dir_all(&dir).expect("pause dir");
        let src = crate::manifest::repo().join("tests/pause/pause.c");
        let pid = std::process::id();
        let exe = dir.join(format!("pause.{pid}"));
        let out = Command::new("cc")
            .args(["-static", "-O2", "-o"])
            .arg(&exe)
            .arg(&src)
            .output()
            .expect("run cc (install gcc and libc6-dev: deploy/install-deps.sh test)");
        assert!(
            out.status.success(),
            "cc {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = std::fs::read(&exe).expect("pause binary");
        let _ = std::fs::remove_file(&exe);
        let layer = oci::Layer::from_files(&dir.join("layer.tar"), &[("pause", 0o755, &bytes)]);
        let path = dir.join("pause.tar");
        oci::write_image(
            &path,
            IMAGE,
            &[layer],
            &oci::Config {
                entrypoint: vec!["/pause".into()],
                env: Vec::new(),
            },
        );
        path
    })
}
