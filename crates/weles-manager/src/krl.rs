//! OpenSSH key revocation lists (PROTOCOL.krl): the host keys of a tenant's deleted VMs and
//! replaced host keys, so that a tenant's ssh refuses them even with a still-valid certificate
//! (`RevokedHostKeys` in the config `weles ssh-config` writes).

const MAGIC: &[u8; 8] = b"SSHKRL\n\0";
const FORMAT_VERSION: u32 = 1;
const SECTION_EXPLICIT_KEY: u8 = 2;

fn string(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(&(s.len() as u32).to_be_bytes());
    b.extend_from_slice(s);
}

/// A KRL revoking exactly `key_blobs` (OpenSSH public key blobs).
pub fn build(key_blobs: &[Vec<u8>], krl_version: u64, generated: u64, comment: &str) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    b.extend_from_slice(&krl_version.to_be_bytes());
    b.extend_from_slice(&generated.to_be_bytes());
    b.extend_from_slice(&0u64.to_be_bytes()); // flags
    string(&mut b, b""); // reserved
    string(&mut b, comment.as_bytes());
    if !key_blobs.is_empty() {
        let mut section = Vec::new();
        for k in key_blobs {
            string(&mut section, k);
        }
        b.push(SECTION_EXPLICIT_KEY);
        string(&mut b, &section);
    }
    b
}

/// A KRL of OpenSSH public key lines (unparsable lines are skipped).
pub fn from_openssh(keys: &[String], krl_version: u64, generated: u64, comment: &str) -> Vec<u8> {
    let blobs: Vec<Vec<u8>> = keys
        .iter()
        .filter_map(|k| ssh_key::PublicKey::from_openssh(k).ok())
        .filter_map(|k| k.to_bytes().ok())
        .collect();
    build(&blobs, krl_version, generated, comment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_protocol_krl() {
        let k = build(&[vec![1, 2, 3]], 7, 9, "c");
        assert_eq!(&k[..8], b"SSHKRL\n\0");
        assert_eq!(&k[8..12], &1u32.to_be_bytes());
        assert_eq!(&k[12..20], &7u64.to_be_bytes());
        assert_eq!(&k[20..28], &9u64.to_be_bytes());
        // flags, empty reserved, comment "c", then one explicit-key section of one blob.
        assert_eq!(
            &k[28..],
            &[
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, b'c', 2, 0, 0, 0, 7, 0, 0, 0, 3, 1,
                2, 3
            ]
        );
        assert_eq!(build(&[], 1, 1, "").len(), 8 + 4 + 8 + 8 + 8 + 4 + 4);
    }
}
