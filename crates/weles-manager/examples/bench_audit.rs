//! Reading a tenant's events from the audit log: through the index (`AuditLog::read`) against
//! a full scan of the file (how reads worked before the index, kept here as the baseline). Not
//! a test.
//!
//!   cargo run --release -p weles-manager --example bench_audit -- RECORDS [DIR]
//!
//! DIR (default /dev/shm/weles-bench-audit) should be on tmpfs: every append is fsynced, and the
//! bench measures reads, not the disk. Tenants `a` (60 % of the records, VMs web and db), `b`
//! (20 %) and the host (20 %).

use std::io::BufRead;
use std::time::{Duration, Instant};

use weles_manager::audit::{AuditLog, Record, TenantKeys};

fn main() {
    let mut args = std::env::args().skip(1);
    let records: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let dir = std::path::PathBuf::from(
        args.next()
            .unwrap_or_else(|| "/dev/shm/weles-bench-audit".into()),
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench directory");
    let path = dir.join("audit.log");
    let key = weles_manager::identity::load_ssh_key(
        &weles_manager::identity::new_ssh_key("bench").expect("key"),
    )
    .expect("key");
    let mut keys = TenantKeys::new();
    keys.insert("a".into(), zeroize::Zeroizing::new([1u8; 32]));
    keys.insert("b".into(), zeroize::Zeroizing::new([2u8; 32]));

    let (log, _) = AuditLog::open(&path, key.clone(), keys.clone()).expect("open");
    let t = Instant::now();
    for i in 0..records {
        let (tenant, vm) = match i % 5 {
            0 => (None, None),
            1 | 2 => (Some("a"), Some("web")),
            3 => (Some("a"), Some("db")),
            _ => (Some("b"), Some("web")),
        };
        let event = serde_json::json!({ "state": "compliant", "entries": i });
        log.append("vm_notice", vm, tenant, event, None)
            .expect("append");
    }
    let append = t.elapsed();
    drop(log);
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    let t = Instant::now();
    let (log, _) = AuditLog::open(&path, key, keys.clone()).expect("reopen");
    let open = t.elapsed();

    // The webhook's step: tenant a's next event after its second-to-last record.
    let last_a = log.read(0, "a", None, usize::MAX).expect("read");
    let after = last_a[last_a.len() - 2].seq;
    // History pages of VM db (a third of tenant a's records; the VM is sealed inside each):
    // the first 100, and 100 after a cursor 90 % into the log (`weles vm events --after N`).
    let page = |after: u64| log.read(after, "a", Some("db"), 100).expect("read").len();
    let deep = records * 9 / 10;
    let cases = [
        (
            "next event after a cursor (webhook)",
            time(200, || log.read(after, "a", None, 1).expect("read").len()),
            time(5, || scan(&path, &keys, after, "a", None, 1)),
        ),
        (
            "first 100 events of one VM (history page)",
            time(50, || page(0)),
            time(5, || scan(&path, &keys, 0, "a", Some("db"), 100)),
        ),
        (
            "100 events of one VM after a cursor at 90 %",
            time(50, || page(deep)),
            time(5, || scan(&path, &keys, deep, "a", Some("db"), 100)),
        ),
    ];

    println!("audit log: {records} records, {:.1} MB", size as f64 / 1e6);
    println!(
        "  append (sign, seal, fsync on tmpfs): {:.1} µs/record; open (check every record, build the index): {:.0} ms",
        append.as_secs_f64() * 1e6 / records as f64,
        open.as_secs_f64() * 1e3
    );
    for (what, indexed, scan) in cases {
        println!(
            "  {what}: index {:.1} µs, full scan {:.1} ms, ratio {:.1}×",
            indexed.as_secs_f64() * 1e6,
            scan.as_secs_f64() * 1e3,
            scan.as_secs_f64() / indexed.as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Median time of `runs` calls.
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    let mut v: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .collect();
    v.sort();
    v[v.len() / 2]
}

/// The read before the index: every line parsed until `limit` matches.
fn scan(
    path: &std::path::Path,
    keys: &TenantKeys,
    after: u64,
    tenant: &str,
    vm: Option<&str>,
    limit: usize,
) -> usize {
    let f = std::io::BufReader::new(std::fs::File::open(path).expect("log"));
    let key = keys.get(tenant);
    let mut n = 0;
    for line in f.lines() {
        let Ok(line) = line else { break };
        let Some((json, _)) = line.rsplit_once('\t') else {
            continue;
        };
        let Ok(rec) = serde_json::from_str::<Record>(json) else {
            continue;
        };
        if rec.seq <= after || rec.tenant.as_deref() != Some(tenant) {
            continue;
        }
        let Ok(Some(body)) = rec.open(key.map(|k| &**k)) else {
            continue;
        };
        if vm.is_some() && body.vm.as_deref() != vm {
            continue;
        }
        n += 1;
        if n >= limit {
            break;
        }
    }
    n
}
