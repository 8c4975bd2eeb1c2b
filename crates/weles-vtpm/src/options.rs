//! swtpm's option syntax: `--server type=tcp,port=2321,bindaddr=127.0.0.1`, `--ctrl
//! type=unixio,path=/run/vm1/swtpm-sock`, `--flags not-need-init,startup-clear`,
//! `--tpmstate dir=/var/lib/weles/vm1`, `--log file=...,level=N`, `--pid file=...`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::server::Endpoint;

/// Why an option value is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{option} {value:?}: {why}")]
pub struct OptionError {
    pub option: &'static str,
    pub value: String,
    pub why: String,
}

/// `a=b,c,d=e` → {a: b, c: "", d: e}.
pub fn key_values(
    option: &'static str,
    value: &str,
) -> Result<BTreeMap<String, String>, OptionError> {
    let mut m = BTreeMap::new();
    for part in value.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        if m.insert(k.to_string(), v.to_string()).is_some() {
            return Err(OptionError {
                option,
                value: value.into(),
                why: format!("{k} given twice"),
            });
        }
    }
    Ok(m)
}

/// `--server` / `--ctrl`: `type=tcp,port=N[,bindaddr=A]` or `type=unixio,path=P`.
pub fn endpoint(option: &'static str, value: &str) -> Result<Endpoint, OptionError> {
    let m = key_values(option, value)?;
    let err = |why: String| OptionError {
        option,
        value: value.into(),
        why,
    };
    for k in m.keys() {
        if ![
            "type",
            "port",
            "bindaddr",
            "path",
            "mode",
            "uid",
            "gid",
            "disconnect",
        ]
        .contains(&k.as_str())
        {
            return Err(err(format!("unknown parameter {k:?}")));
        }
    }
    match m.get("type").map(String::as_str) {
        Some("tcp") => {
            let port = m
                .get("port")
                .ok_or_else(|| err("type=tcp needs port=N".into()))?
                .parse()
                .map_err(|_| err("port must be a number 1-65535".into()))?;
            let bind = m
                .get("bindaddr")
                .cloned()
                .unwrap_or_else(|| "127.0.0.1".into());
            Ok(Endpoint::Tcp { bind, port })
        }
        Some("unixio") => Ok(Endpoint::Unix(PathBuf::from(
            m.get("path")
                .ok_or_else(|| err("type=unixio needs path=P".into()))?,
        ))),
        Some(t) => Err(err(format!("type {t:?} is not supported (tcp, unixio)"))),
        None => Err(err("type=tcp or type=unixio is required".into())),
    }
}

/// `--flags`: (initialise at start, TPM2_Startup to send: Some(true) CLEAR, Some(false) STATE).
pub fn flags(value: &str) -> Result<(bool, Option<bool>), OptionError> {
    let m = key_values("--flags", value)?;
    let mut init = false;
    let mut startup = None;
    for k in m.keys() {
        match k.as_str() {
            "not-need-init" => init = true,
            "startup-clear" => startup = Some(true),
            "startup-state" => startup = Some(false),
            "startup-none" => startup = None,
            other => {
                return Err(OptionError {
                    option: "--flags",
                    value: value.into(),
                    why: format!("unknown flag {other:?}"),
                });
            }
        }
    }
    Ok((init, startup))
}

/// `--tpmstate dir=D` (swtpm's `backend-uri=dir://D` too).
pub fn tpmstate(value: &str) -> Result<PathBuf, OptionError> {
    let m = key_values("--tpmstate", value)?;
    if let Some(d) = m.get("dir") {
        return Ok(PathBuf::from(d));
    }
    if let Some(uri) = m.get("backend-uri").and_then(|u| u.strip_prefix("dir://")) {
        return Ok(PathBuf::from(uri));
    }
    Err(OptionError {
        option: "--tpmstate",
        value: value.into(),
        why: "dir=PATH is required".into(),
    })
}

/// `file=PATH` of `--log` / `--pid`.
pub fn file(option: &'static str, value: &str) -> Result<Option<PathBuf>, OptionError> {
    Ok(key_values(option, value)?.get("file").map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swtpm_spellings() {
        assert_eq!(
            endpoint("--server", "type=tcp,port=2321,bindaddr=127.0.0.1"),
            Ok(Endpoint::Tcp {
                bind: "127.0.0.1".into(),
                port: 2321
            })
        );
        assert_eq!(
            endpoint("--ctrl", "type=unixio,path=/tmp/s"),
            Ok(Endpoint::Unix("/tmp/s".into()))
        );
        assert!(endpoint("--ctrl", "type=tcp").is_err());
        assert!(endpoint("--ctrl", "type=cuse,path=x").is_err());
        assert!(endpoint("--ctrl", "type=tcp,port=99999").is_err());
        assert_eq!(flags("not-need-init,startup-clear"), Ok((true, Some(true))));
        assert!(flags("bogus").is_err());
        assert_eq!(tpmstate("dir=/var/lib/x"), Ok(PathBuf::from("/var/lib/x")));
        assert_eq!(tpmstate("backend-uri=dir:///v"), Ok(PathBuf::from("/v")));
        assert_eq!(
            file("--log", "file=/tmp/l,level=20"),
            Ok(Some(PathBuf::from("/tmp/l")))
        );
    }
}
