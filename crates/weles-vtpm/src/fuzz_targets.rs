//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the tests that replay their
//! corpora on stable Rust: the parsers of bytes that come from QEMU, libvirt or a guest.

use crate::{ctrl, events, frame, tpm_cmd};

/// Control-channel requests: parse repeatedly from a stream of bytes, as the server does.
pub fn vtpm_ctrl(data: &[u8]) {
    let mut rest = data;
    while !rest.is_empty() {
        match ctrl::parse(rest) {
            Ok((req, used)) => {
                assert!(used > 0 && used <= rest.len());
                let _ = ctrl::encode(&req);
                rest = &rest[used..];
            }
            Err(_) => break,
        }
    }
}

/// Data-channel framing: split a byte stream into commands as the server does.
pub fn vtpm_frame(data: &[u8]) {
    let mut rest = data;
    while rest.len() >= frame::HEADER {
        let header: [u8; frame::HEADER] = rest[..frame::HEADER]
            .try_into()
            .unwrap_or([0; frame::HEADER]);
        let Ok(size) = frame::frame_size(&header) else {
            break;
        };
        let Some(cmd) = rest.get(..size) else { break };
        assert!(frame::check_command(cmd).is_ok());
        let _ = frame::code(cmd);
        // What the engine reads from guest commands (and from responses) for events.
        let _ = tpm_cmd::extend_digests(cmd);
        let _ = tpm_cmd::event_response_digests(cmd);
        let _ = tpm_cmd::su_clear(cmd);
        let _ = tpm_cmd::parse_pcr_read(cmd);
        let _ = tpm_cmd::parse_read_public(cmd);
        rest = &rest[size..];
    }
}

/// Event-socket requests: the framing and the JSON of management requests.
pub fn vtpm_events(data: &[u8]) {
    let mut r = data;
    while let Ok(Some(_)) = events::read_frame::<events::Request>(&mut r) {}
}
