//! The pause image, from the project's own source (`tests/pause/pause.c`): compiled
//! static, packed into a one-layer OCI image layout tar that `ctr images import` takes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::json;
use sha2::{Digest, Sha256};

pub const IMAGE: &str = "ferry.test/pause:1";

fn digest(b: &[u8]) -> String {
    let d = Sha256::digest(b);
    let hex: String = d.iter().map(|x| format!("{x:02x}")).collect();
    format!("sha256:{hex}")
}

fn append(t: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_cksum();
    t.append_data(&mut h, path, data).expect("tar entry");
}

fn blob(t: &mut tar::Builder<Vec<u8>>, data: &[u8]) -> (String, usize) {
    let d = digest(data);
    let name = format!("blobs/sha256/{}", &d["sha256:".len()..]);
    append(t, &name, 0o644, data);
    (d, data.len())
}

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

        let mut layer = tar::Builder::new(Vec::new());
        append(&mut layer, "pause", 0o755, &bytes);
        let layer = layer.into_inner().expect("layer tar");

        let mut t = tar::Builder::new(Vec::new());
        let (layer_d, layer_n) = blob(&mut t, &layer);
        let config = json!({
            "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            "os": "linux",
            "config": {"Entrypoint": ["/pause"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_d]},
        })
        .to_string();
        let (config_d, config_n) = blob(&mut t, config.as_bytes());
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_d, "size": config_n},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_d, "size": layer_n}],
        })
        .to_string();
        let (manifest_d, manifest_n) = blob(&mut t, manifest.as_bytes());
        let index = json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_d, "size": manifest_n,
                "annotations": {"io.containerd.image.name": IMAGE,
                                "org.opencontainers.image.ref.name": "1"},
            }],
        })
        .to_string();
        append(&mut t, "index.json", 0o644, index.as_bytes());
        append(
            &mut t,
            "oci-layout",
            0o644,
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        );
        let tmp = dir.join(format!("pause.tar.{pid}"));
        std::fs::write(&tmp, t.into_inner().expect("image tar")).expect("write pause.tar");
        let path = dir.join("pause.tar");
        std::fs::rename(&tmp, &path).expect("rename pause.tar");
        path
    })
}
