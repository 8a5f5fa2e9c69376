//! The images a kind node runs ferry from, built without a Docker engine:
//!
//! - ferry's runtime image, from the same recipe as `deploy/Dockerfile`: a Debian root with
//!   the packages of `deploy/image/packages` (debootstrap, then trimmed as a slim image
//!   is), and on top the files `deploy/image/stage.sh` lays out from
//!   `deploy/image/files` (the binaries of this build, stripped). The base layer is built
//!   once per package list and kept under `target/ferry-image/`; the top layer per test
//!   process. The tag is the top layer's digest, so every build is a new image.
//! - an etcd image for ferry's etcd Deployment: Debian's etcd binary and the libraries it
//!   links, where the manifest names `registry.k8s.io/etcd` (no registry is reachable here;
//!   `deploy/kind/up.sh` likewise swaps in the etcd image kind already has).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::cri::oci::{self, Layer};
use crate::manifest::repo;

/// An image tar `ctr images import` takes, and the name it imports as.
#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub tar: PathBuf,
}

fn dir() -> PathBuf {
    let d = repo().join("target/ferry-image");
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
    d
}

/// The packages of `deploy/image/packages`, comments stripped.
pub fn packages() -> Vec<String> {
    let path = repo().join("deploy/image/packages");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The Debian suite of the image: the Dockerfile's `debian:<suite>-slim`.
fn suite() -> String {
    let path = repo().join("deploy/Dockerfile");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .filter_map(|l| l.strip_prefix("FROM debian:"))
        .filter_map(|t| t.split_whitespace().next()?.strip_suffix("-slim"))
        .next_back()
        .unwrap_or_else(|| panic!("no `FROM debian:<suite>-slim` in {}", path.display()))
        .to_string()
}

/// The Dockerfile's ENTRYPOINT (its exec form).
fn entrypoint() -> Vec<String> {
    let path = repo().join("deploy/Dockerfile");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let line = text
        .lines()
        .filter_map(|l| l.strip_prefix("ENTRYPOINT "))
        .next_back()
        .unwrap_or_else(|| panic!("no ENTRYPOINT in {}", path.display()));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("ENTRYPOINT {line} is not JSON: {e}"))
}

/// Holds an exclusive lock on `target/ferry-image/.lock` while `f` runs: test processes
/// building the base at once would each debootstrap.
fn locked<T>(f: impl FnOnce() -> T) -> T {
    let path = dir().join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("lock {}: {e}", path.display()));
    f()
}

/// What a slim Debian image leaves out (documentation, translations, apt's caches).
const TRIMMED: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
];

/// What was not used for three hours goes: every build of the binaries makes a new image
/// (about 150 MB), and a changed package list a new base.
const KEEP: std::time::Duration = std::time::Duration::from_secs(3 * 3600);

/// Marks `path` as used now (its mtime), so that `prune` keeps it.
fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Removes the images and layers not used for `KEEP`.
fn prune() {
    let Ok(entries) = std::fs::read_dir(dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = ["base-", "image-", "layer-", "ferry.", "ferry-next."]
            .iter()
            .any(|p| name.starts_with(p));
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > KEEP);
        if ours && old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Where the base layer of the current package list is kept.
fn base_tar() -> PathBuf {
    let pkgs = packages();
    let key = oci::digest(format!("{}\n{}\nv1", suite(), pkgs.join("\n")).as_bytes());
    dir().join(format!("base-{}.tar", short(&key)))
}

/// Whether the image's base is built already: the first build debootstraps it (tens of
/// seconds, and network to a Debian mirror).
pub fn base_built() -> bool {
    base_tar().exists()
}

/// The base layer: a minbase Debian root with the image's packages.
fn base_layer() -> Layer {
    let pkgs = packages();
    let suite = suite();
    let tar = base_tar();
    locked(|| {
        prune();
        if !tar.exists() {
            build_base(&tar, &suite, &pkgs);
        }
        touch(&tar);
    });
    Layer::from_tar(&tar)
}

fn build_base(tar: &Path, suite: &str, pkgs: &[String]) {
    let mirror = std::env::var("FERRY_IMAGE_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let root = tar.with_extension("root");
    let _ = std::fs::remove_dir_all(&root);
    let log = tar.with_extension("log");
    eprintln!(
        "building the image's base ({suite} minbase + {}) with debootstrap from {mirror}; log: {}",
        pkgs.join(" "),
        log.display()
    );
    let out = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={}", pkgs.join(",")),
        ])
        .arg(suite)
        .arg(&root)
        .arg(&mirror)
        .output()
        .expect("run debootstrap (deploy/install-deps.sh test installs it)");
    let _ = std::fs::write(&log, [out.stdout.as_slice(), &out.stderr].concat());
    assert!(
        out.status.success(),
        "debootstrap of the image's base failed (network to {mirror}? FERRY_IMAGE_MIRROR names \
         another mirror); log: {}\n{}",
        log.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    for t in TRIMMED {
        let p = root.join(t);
        let _ = std::fs::remove_dir_all(&p);
        let _ = std::fs::create_dir_all(&p);
    }
    let tmp = tar.with_extension(format!("tmp.{}", std::process::id()));
    // GNU tar: owners, modes, links and device nodes as they are. /dev, /proc and /sys are
    // the runtime's, as in any image.
    crate::run_ok(
        Command::new("tar")
            .args([
                "--numeric-owner",
                "--exclude=./dev/*",
                "--exclude=./proc/*",
                "--exclude=./sys/*",
                "-C",
            ])
            .arg(&root)
            .arg("-cf")
            .arg(&tmp)
            .arg("."),
        "tar of the image's base",
    );
    std::fs::rename(&tmp, tar).expect("rename base tar");
    let _ = std::fs::remove_dir_all(&root);
}

/// The image's own files (deploy/image/stage.sh), from this build's binaries, with
/// `extra` files (path, content) beside them.
fn top_layer(name: &str, extra: &[(&str, &str)]) -> Layer {
    let stage = tempfile::tempdir().expect("stage dir");
    crate::run_ok(
        Command::new(repo().join("deploy/image/stage.sh"))
            .arg(stage.path())
            .arg(crate::bin_dir()),
        "deploy/image/stage.sh",
    );
    for (path, content) in extra {
        let p = stage.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().expect("a file's directory")).expect("mkdir");
        std::fs::write(&p, content).expect("write extra file");
    }
    let tmp = dir().join(format!("{name}.{}.tar", std::process::id()));
    let file = std::fs::File::create(&tmp).expect("create top layer");
    let mut t = tar::Builder::new(std::io::BufWriter::new(file));
    // The same build makes the same bytes: test processes share one file per content.
    t.mode(tar::HeaderMode::Deterministic);
    t.follow_symlinks(false);
    t.append_dir_all(".", stage.path()).expect("top layer tar");
    let mut w = t.into_inner().expect("finish top layer");
    std::io::Write::flush(&mut w).expect("flush top layer");
    drop(w);
    let layer = Layer::from_tar(&tmp);
    let path = dir().join(format!("layer-{}.tar", short(&layer.digest)));
    std::fs::rename(&tmp, &path).expect("rename top layer");
    Layer { path, ..layer }
}

/// The first 12 hex digits of a digest: a tag.
fn short(digest: &str) -> &str {
    let hex = digest.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}

fn build(name: &str, extra: &[(&str, &str)]) -> Image {
    let base = base_layer();
    let top = top_layer(name, extra);
    let both = oci::digest(format!("{}{}", base.digest, top.digest).as_bytes());
    let tag = short(&both);
    let image = format!("ferry.test/ferry:{tag}");
    let tar = dir().join(format!("image-{tag}.tar"));
    if tar.exists() {
        touch(&tar);
        return Image { name: image, tar };
    }
    oci::write_image(
        &tar,
        &image,
        &[base, top],
        &oci::Config {
            entrypoint: entrypoint(),
            env: vec![oci::DEBIAN_PATH.into()],
        },
    );
    Image { name: image, tar }
}

/// ferry's runtime image, of this build.
pub fn ferry() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| build("ferry", &[]))
}

/// Another build of the same sources (a marker file differs): what a rolling upgrade
/// rolls to.
pub fn ferry_next() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| build("ferry-next", &[("/etc/ferry-build", "next\n")]))
}

/// The image standing in for `registry.k8s.io/etcd`: Debian's etcd and what it links.
pub fn etcd() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let etcd = Path::new("/usr/bin/etcd");
        let bytes = std::fs::read(etcd).expect("/usr/bin/etcd (Debian's etcd-server)");
        let ldd = Command::new("ldd").arg(etcd).output().expect("run ldd");
        let libs: Vec<PathBuf> = String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
            .map(PathBuf::from)
            .collect();
        let lib_bytes: Vec<(String, Vec<u8>)> = libs
            .iter()
            .map(|l| {
                let b = std::fs::read(l).unwrap_or_else(|e| panic!("read {}: {e}", l.display()));
                (l.display().to_string(), b)
            })
            .collect();
        let mut files: Vec<(&str, u32, &[u8])> = vec![("usr/local/bin/etcd", 0o755, &bytes)];
        for (p, b) in &lib_bytes {
            files.push((p.trim_start_matches('/'), 0o755, b));
        }
        let layer = Layer::from_files(&dir().join("etcd-layer.tar"), &files);
        let name = "ferry.test/etcd:debian".to_string();
        let tar = dir().join("etcd.image.tar");
        oci::write_image(
            &tar,
            &name,
            &[layer],
            &oci::Config {
                entrypoint: Vec::new(),
                env: vec![oci::DEBIAN_PATH.into()],
            },
        );
        Image { name, tar }
    })
}
