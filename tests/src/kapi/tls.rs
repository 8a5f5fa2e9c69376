//! The stand-in's TLS identity, made in-process per server: a CA of its own and a serving
//! certificate it signs, valid for every name an in-cluster client may use for the API server
//! (the service's DNS names, `KUBERNETES_SERVICE_HOST`'s address, loopback). Also the random
//! bearer tokens and the files a client reads them from.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio_rustls::rustls::crypto::{ring as ring_provider, CryptoProvider};
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use super::KapiError;

/// The names the API server's certificate carries in a cluster (kubeadm's set), so a client
/// may reach it by any of them.
const DNS_NAMES: [&str; 5] = [
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// What a TLS server needs: the acceptor, and the CA's PEM for its clients.
pub(super) struct Identity {
    pub acceptor: TlsAcceptor,
    pub ca_pem: String,
}

/// ring, named rather than taken from the process default: no default is installed in a
/// test binary, and kube's client picks ring explicitly too.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring_provider::default_provider())
}

/// A fresh CA and a serving certificate for `ips` (plus loopback and the cluster's names).
pub(super) fn identity(ips: &[IpAddr]) -> Result<Identity, KapiError> {
    let ca_key = KeyPair::generate().map_err(|e| KapiError::Certificate("the CA's key", e))?;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "ferry-tests kubernetes CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(|e| KapiError::Certificate("the CA's certificate", e))?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().map_err(|e| KapiError::Certificate("the server's key", e))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let mut addrs = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    addrs.extend(ips.iter().copied().filter(|ip| !ip.is_unspecified()));
    addrs.sort();
    addrs.dedup();
    params.subject_alt_names = addrs.into_iter().map(SanType::IpAddress).collect();
    for name in DNS_NAMES {
        let dns = name
            .try_into()
            .map_err(|e| KapiError::Certificate("a DNS name of the server", e))?;
        params.subject_alt_names.push(SanType::DnsName(dns));
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| KapiError::Certificate("the server's certificate", e))?;

    let der_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_no_client_auth()
                .with_single_cert(vec![cert.der().clone()], der_key)
        })
        .map_err(KapiError::TlsConfig)?;
    Ok(Identity {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        ca_pem: ca_cert.pem(),
    })
}

/// 32 random bytes in hex: a bearer token no test can guess by accident.
pub(super) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    if provider().secure_random.fill(&mut bytes).is_err() {
        // The OS refused randomness (never seen on Linux). A test token only has to differ
        // from every other token of the process; the clock and a counter do that.
        use std::hash::{BuildHasher, Hasher};
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        for chunk in bytes.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A kubeconfig for `url`: the CA inline (`certificate-authority-data`) when given, the
/// bearer token when given. JSON is YAML, and serde quotes what needs quoting.
pub(super) fn kubeconfig(url: &str, ca_pem: Option<&str>, token: Option<&str>) -> String {
    let mut cluster = serde_json::json!({ "server": url });
    if let Some(ca) = ca_pem {
        cluster["certificate-authority-data"] =
            base64::engine::general_purpose::STANDARD.encode(ca).into();
    }
    let mut user = serde_json::json!({});
    if let Some(t) = token {
        user["token"] = t.into();
    }
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "t", "cluster": cluster }],
        "contexts": [{ "name": "t", "context": { "cluster": "t", "user": "t" } }],
        "current-context": "t",
        "users": [{ "name": "t", "user": user }],
    });
    format!("{config:#}\n")
}

fn at(path: &Path, what: &str, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Writes `token`, `ca.crt` and `namespace` into `dir` as the kubelet lays out a projected
/// service-account volume: the files in a timestamped `..<time>` directory, `..data` a
/// symlink to it, each name a symlink through `..data`. A later call swaps `..data` at once,
/// as a token rotation does, so a client reading the files never sees half of an update.
/// Mounted at /var/run/secrets/kubernetes.io/serviceaccount, this is what in-cluster clients
/// read.
pub fn write_service_account_dir(
    dir: &Path,
    token: &str,
    ca_pem: &str,
    namespace: &str,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| at(dir, "creating", e))?;
    // The kubelet's name: `..` and the time to the second, then a unique suffix.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| k8s_openapi::jiff::Timestamp::from_second(d.as_secs() as i64).ok())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let stamp = format!(
        "..{}.{}",
        now.strftime("%Y_%m_%d_%H_%M_%S"),
        random_token().get(..10).unwrap_or("0")
    );
    let data = dir.join(&stamp);
    std::fs::create_dir(&data).map_err(|e| at(&data, "creating", e))?;
    for (name, content) in [
        ("token", token),
        ("ca.crt", ca_pem),
        ("namespace", namespace),
    ] {
        let file = data.join(name);
        std::fs::write(&file, content).map_err(|e| at(&file, "writing", e))?;
    }
    let link = dir.join("..data");
    let old = std::fs::read_link(&link).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).map_err(|e| at(&tmp, "linking", e))?;
    std::fs::rename(&tmp, &link).map_err(|e| at(&link, "replacing", e))?;
    for name in ["token", "ca.crt", "namespace"] {
        let user = dir.join(name);
        if std::fs::symlink_metadata(&user).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &user)
                .map_err(|e| at(&user, "linking", e))?;
        }
    }
    if let Some(old) = old.filter(|o| *o != Path::new(&stamp)) {
        let old = dir.join(old);
        std::fs::remove_dir_all(&old).map_err(|e| at(&old, "removing", e))?;
    }
    Ok(())
}
