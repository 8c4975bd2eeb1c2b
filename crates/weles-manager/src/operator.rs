//! The operator API server: framed JSON on a Unix socket only root can reach (the socket is
//! mode 0600 in a 0700 directory).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use weles_proto::framing;
use weles_proto::operator::{OperatorReply, OperatorRequest};

use crate::manager::Manager;

/// Binds the operator socket (replacing a stale one).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use: is another welesd running?", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves connections until the listener fails.
pub fn serve(listener: UnixListener, mgr: Arc<Manager>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let mgr = mgr.clone();
        let _ = std::thread::Builder::new()
            .name("operator".into())
            .spawn(move || connection(conn, &mgr));
    }
}

fn connection(mut conn: UnixStream, mgr: &Manager) {
    loop {
        let body = match framing::read_frame(&mut conn) {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                let reply = OperatorReply::error("bad_request", e.to_string());
                let _ = write(&mut conn, &reply);
                return;
            }
        };
        let reply = match serde_json::from_slice::<OperatorRequest>(&body) {
            Ok(req) => mgr.handle(req),
            Err(e) => OperatorReply::error("bad_request", format!("request: {e}")),
        };
        if write(&mut conn, &reply).is_err() {
            return;
        }
    }
}

fn write(conn: &mut UnixStream, reply: &OperatorReply) -> std::io::Result<()> {
    let body = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    framing::write_frame(conn, &body)
}
