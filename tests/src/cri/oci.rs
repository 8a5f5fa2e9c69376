//! OCI image layout tars, as `ctr images import` takes them: layers (plain tars, addressed
//! by their sha256), an image config, a manifest and an index naming the image.
//!
//! Layers are files, streamed into the image tar: the runtime image's base layer is
//! a whole Debian root.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

/// A layer: an uncompressed tar on disk and its digest (which, uncompressed, is also its
/// `diff_id`).
#[derive(Debug, Clone)]
pub struct Layer {
    pub path: PathBuf,
    pub digest: String,
    pub size: u64,
}

impl Layer {
    /// Hashes the tar at `path`.
    pub fn from_tar(path: &Path) -> Layer {
        let mut f =
            File::open(path).unwrap_or_else(|e| panic!("open layer {}: {e}", path.display()));
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = f
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("read layer {}: {e}", path.display()));
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            size += n as u64;
        }
        Layer {
            path: path.to_path_buf(),
            digest: hex_digest(&h.finalize()),
            size,
        }
    }

    /// A layer made of the given files, written to `path`: (path in the image, mode, bytes).
    pub fn from_files(path: &Path, files: &[(&str, u32, &[u8])]) -> Layer {
        let mut t = tar::Builder::new(Vec::new());
        for (name, mode, data) in files {
            append(&mut t, name, *mode, data);
        }
        let bytes = t.into_inner().expect("layer tar");
        write_atomic(path, &bytes);
        Layer::from_tar(path)
    }
}

/// What the image config says about running it.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub entrypoint: Vec<String>,
    pub env: Vec<String>,
}

/// The PATH a Debian image's config carries (debian:bookworm-slim's).
pub const DEBIAN_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn hex_digest(d: &[u8]) -> String {
    let hex: String = d.iter().map(|x| format!("{x:02x}")).collect();
    format!("sha256:{hex}")
}

pub fn digest(b: &[u8]) -> String {
    hex_digest(&Sha256::digest(b))
}

pub fn append(t: &mut tar::Builder<impl Write>, path: &str, mode: u32, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_cksum();
    t.append_data(&mut h, path, data).expect("tar entry");
}

fn blob_name(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

/// Writes `data` through a temporary file renamed into place: parallel test processes may
/// build the same file, and a reader never sees half of one.
pub fn write_atomic(path: &Path, data: &[u8]) {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, data).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// Writes the image `name` (`repo:tag`) made of `layers` (bottom first) to `out`.
pub fn write_image(out: &Path, name: &str, layers: &[Layer], config: &Config) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut cfg = json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": config.env},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| &l.digest).collect::<Vec<_>>()},
    });
    if !config.entrypoint.is_empty() {
        cfg["config"]["Entrypoint"] = json!(config.entrypoint);
    }
    let cfg = cfg.to_string();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(cfg.as_bytes()), "size": cfg.len()},
        "layers": layers.iter().map(|l| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
    })
    .to_string();
    let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(manifest.as_bytes()), "size": manifest.len(),
            "annotations": {"io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": tag},
        }],
    })
    .to_string();

    let tmp = out.with_extension(format!("tmp.{}", std::process::id()));
    let file = File::create(&tmp).unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
    let mut t = tar::Builder::new(std::io::BufWriter::new(file));
    for l in layers {
        t.append_path_with_name(&l.path, blob_name(&l.digest))
            .unwrap_or_else(|e| panic!("add layer {}: {e}", l.path.display()));
    }
    for doc in [&cfg, &manifest] {
        append(
            &mut t,
            &blob_name(&digest(doc.as_bytes())),
            0o644,
            doc.as_bytes(),
        );
    }
    append(&mut t, "index.json", 0o644, index.as_bytes());
    append(
        &mut t,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    );
    let mut w = t.into_inner().expect("finish image tar");
    w.flush().expect("flush image tar");
    drop(w);
    std::fs::rename(&tmp, out).unwrap_or_else(|e| panic!("rename to {}: {e}", out.display()));
}
