//! The network configuration on stdin: the header every plugin validates the same way,
//! and typed access to the rest.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Code, Error};
use crate::result::CniResult;
use crate::version;

/// A parsed network configuration: the common header plus the whole document, so that
/// each plugin reads its own keys and delegates receive the config unchanged.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub plugin_type: String,
    pub raw: Value,
    bytes: Vec<u8>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    /// Refuses `verb` (CHECK, GC, STATUS) for a configuration of a version before `min`,
    /// the first that has it.
    pub fn require_version(&self, min: &str, verb: &str) -> Result<(), Error> {
        if version::at_least(&self.cni_version, min) {
            return Ok(());
        }
        Err(Error::new(
            Code::IncompatibleVersion,
            format!("config version {} does not allow {verb}", self.cni_version),
        ))
    }

    /// Parses and validates stdin: JSON (code 6), a supported `cniVersion` (code 1),
    /// a valid `name` (code 7).
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let raw: Value = serde_json::from_slice(bytes).map_err(|e| {
            Error::new(Code::Decode, "error parsing network configuration")
                .with_details(e.to_string())
        })?;
        if !raw.is_object() {
            return Err(Error::new(
                Code::Decode,
                "error parsing network configuration: not a JSON object",
            ));
        }
        let cni_version = match raw.get("cniVersion") {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(Error::new(Code::Decode, "cniVersion must be a string")
                    .with_details(other.to_string()))
            }
        };
        if !version::is_supported(&cni_version) {
            return Err(
                Error::new(Code::IncompatibleVersion, "incompatible CNI versions").with_details(
                    format!(
                        "config is {cni_version:?}, plugin supports {:?}",
                        version::SUPPORTED
                    ),
                ),
            );
        }
        let name = match raw.get("name") {
            None => return Err(Error::new(Code::InvalidConfig, "missing network name")),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(Error::new(Code::Decode, "name must be a string")
                    .with_details(other.to_string()))
            }
        };
        validate_network_name(&name)?;
        let plugin_type = match raw.get("type") {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(Error::new(Code::Decode, "type must be a string")
                    .with_details(other.to_string()))
            }
        };
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            raw,
            bytes: bytes.to_vec(),
        })
    }

    /// The configuration exactly as received, for delegates.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Deserializes the whole document into a plugin's own type; a key of the wrong
    /// type is code 6 and names the key.
    pub fn parse_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_path_to_error::deserialize(&self.raw).map_err(|e| {
            let path = e.path().to_string();
            Error::new(
                Code::Decode,
                format!("invalid network configuration key {path:?}"),
            )
            .with_details(e.inner().to_string())
        })
    }

    /// Deserializes one nested key (e.g. `ipam`) into a type, naming the key on error.
    pub fn parse_key<T: DeserializeOwned + Default>(&self, key: &str) -> Result<T, Error> {
        match self.raw.get(key) {
            None | Some(Value::Null) => Ok(T::default()),
            Some(v) => serde_path_to_error::deserialize(v).map_err(|e| {
                let path = e.path().to_string();
                let path = if path == "." {
                    key.to_string()
                } else {
                    format!("{key}.{path}")
                };
                Error::new(
                    Code::Decode,
                    format!("invalid network configuration key {path:?}"),
                )
                .with_details(e.inner().to_string())
            }),
        }
    }

    /// `prevResult`, when present, in any supported result version.
    pub fn prev_result(&self) -> Result<Option<CniResult>, Error> {
        match self.raw.get("prevResult") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => CniResult::from_value(v.clone()).map(Some).map_err(|e| {
                Error::new(Code::Decode, "cannot parse prevResult").with_details(e.to_string())
            }),
        }
    }

    /// The attachments a GC must keep. Spec 1.1.0 named the key `cni.dev/attachments`;
    /// later text and libcni use `cni.dev/valid-attachments`, so both are read. A GC
    /// without the list is an error (code 7), never "keep nothing": freeing every live
    /// pod's address because a caller forgot the key is the worst reading of it.
    pub fn valid_attachments(&self) -> Result<Vec<Attachment>, Error> {
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            if let Some(v) = self.raw.get(key) {
                return serde_json::from_value(v.clone()).map_err(|e| {
                    Error::new(Code::Decode, format!("invalid {key}: nothing was freed"))
                        .with_details(e.to_string())
                });
            }
        }
        Err(Error::new(
            Code::InvalidConfig,
            "GC needs cni.dev/valid-attachments (an empty list means none is valid): nothing was freed",
        ))
    }
}

/// The longest network name ferry accepts. The spec sets no bound; ferry writes
/// `ferry/<network>/<container ID>/<ifname>` into the host veth's alias, which the kernel
/// caps at 255 bytes: 6 + 100 + 1 + 128 (`env::MAX_CONTAINER_ID`) + 1 + 15 = 251.
pub const MAX_NETWORK_NAME: usize = 100;

fn validate_network_name(name: &str) -> Result<(), Error> {
    crate::env::validate_spec_name("network name", name, MAX_NETWORK_NAME, Code::InvalidConfig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_errors_have_spec_codes() {
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code, 6);
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"9.9.9","name":"n"}"#)
                .unwrap_err()
                .code,
            1
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0"}"#)
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":1,"name":"n"}"#)
                .unwrap_err()
                .code,
            6
        );
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"-x"}"#)
                .unwrap_err()
                .code,
            7
        );
        let c = NetConf::parse(br#"{"cniVersion":"0.3.1","name":"n","type":"ferry"}"#).unwrap();
        assert_eq!(c.plugin_type, "ferry");
    }

    #[test]
    fn wrong_type_names_the_key() {
        #[derive(Debug, Deserialize, Default)]
        struct P {
            #[allow(dead_code)]
            mtu: Option<u32>,
        }
        let c = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","mtu":"big"}"#).unwrap();
        let e = c.parse_as::<P>().unwrap_err();
        assert_eq!(e.code, 6);
        assert!(e.msg.contains("mtu"), "{}", e.msg);
    }

    #[test]
    fn reads_both_gc_keys() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.valid_attachments().unwrap().len(), 1);
        let none = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n"}"#).unwrap();
        assert_eq!(none.valid_attachments().unwrap_err().code, 7);
        let bad =
            NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":{}}"#)
                .unwrap();
        assert_eq!(bad.valid_attachments().unwrap_err().code, 6);
    }

    #[test]
    fn network_name_is_bounded() {
        let long = format!(r#"{{"cniVersion":"1.0.0","name":"{}"}}"#, "n".repeat(101));
        assert_eq!(NetConf::parse(long.as_bytes()).unwrap_err().code, 7);
        let ok = format!(r#"{{"cniVersion":"1.0.0","name":"{}"}}"#, "n".repeat(100));
        assert!(NetConf::parse(ok.as_bytes()).is_ok());
    }
}
